//! Each OTP strategy and restart type, run on a live tree, asserting the observable order of
//! starts and stops.

use std::time::Duration;

use garrison_supervisor::{
    ChildSpec, EventKind, Restart, Strategy, SupervisorBuilder, SupervisorRef,
};
use garrison_tests::probe::{Command, Log, Probe, eventually};

const LIMIT: Duration = Duration::from_secs(10);

async fn tree(strategy: Strategy, children: &[(&str, Restart)], log: &Log) -> SupervisorRef {
    let mut builder = SupervisorBuilder::new("root")
        .strategy(strategy)
        .intensity(10, Duration::from_secs(5));
    for (id, restart) in children {
        builder = builder.child(ChildSpec::new(*id, Probe::start(log)).restart(*restart));
    }
    builder
        .build()
        .expect("valid tree")
        .start()
        .await
        .expect("tree starts")
}

struct Case {
    name: &'static str,
    strategy: Strategy,
    children: &'static [(&'static str, Restart)],
    /// Which child is told what.
    target: &'static str,
    command: fn() -> Command,
    /// The log entries after the command, in order.
    expected: &'static [&'static str],
    /// Children no longer listed afterwards (terminated and removed), whose handles are closed.
    gone: &'static [&'static str],
}

const ALL_PERMANENT: &[(&str, Restart)] = &[
    ("a", Restart::Permanent),
    ("b", Restart::Permanent),
    ("c", Restart::Permanent),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategy_table() {
    let cases = [
        Case {
            name: "one_for_one restarts only the failed child",
            strategy: Strategy::OneForOne,
            children: ALL_PERMANENT,
            target: "b",
            command: || Command::Panic,
            expected: &["start b#2"],
            gone: &[],
        },
        Case {
            name: "one_for_all stops the others in reverse and restarts all in order",
            strategy: Strategy::OneForAll,
            children: ALL_PERMANENT,
            target: "b",
            command: || Command::Panic,
            expected: &[
                "stop c#1",
                "stop a#1",
                "start a#2",
                "start b#2",
                "start c#2",
            ],
            gone: &[],
        },
        Case {
            name: "rest_for_one restarts the failed child and those after it",
            strategy: Strategy::RestForOne,
            children: ALL_PERMANENT,
            target: "b",
            command: || Command::Fail,
            expected: &["stop c#1", "start b#2", "start c#2"],
            gone: &[],
        },
        Case {
            name: "rest_for_one on the last child restarts only it",
            strategy: Strategy::RestForOne,
            children: ALL_PERMANENT,
            target: "c",
            command: || Command::Panic,
            expected: &["start c#2"],
            gone: &[],
        },
        Case {
            name: "transient child that stops normally is not restarted",
            strategy: Strategy::OneForOne,
            children: &[("a", Restart::Permanent), ("t", Restart::Transient)],
            target: "t",
            command: || Command::Stop,
            expected: &["stop t#1"],
            gone: &[],
        },
        Case {
            name: "transient child that panics is restarted",
            strategy: Strategy::OneForOne,
            children: &[("a", Restart::Permanent), ("t", Restart::Transient)],
            target: "t",
            command: || Command::Panic,
            expected: &["start t#2"],
            gone: &[],
        },
        Case {
            name: "temporary child is never restarted, even after a panic",
            strategy: Strategy::OneForAll,
            children: &[("a", Restart::Permanent), ("x", Restart::Temporary)],
            target: "x",
            command: || Command::Panic,
            expected: &[],
            gone: &["x"],
        },
        Case {
            name: "one_for_all terminates a temporary sibling and restarts the rest without it",
            strategy: Strategy::OneForAll,
            children: &[
                ("a", Restart::Permanent),
                ("x", Restart::Temporary),
                ("b", Restart::Permanent),
            ],
            target: "b",
            command: || Command::Panic,
            expected: &["stop x#1", "stop a#1", "start a#2", "start b#2"],
            gone: &["x"],
        },
        Case {
            name: "rest_for_one terminates a temporary child after the failed one",
            strategy: Strategy::RestForOne,
            children: &[
                ("a", Restart::Permanent),
                ("b", Restart::Permanent),
                ("x", Restart::Temporary),
            ],
            target: "b",
            command: || Command::Fail,
            expected: &["stop x#1", "start b#2"],
            gone: &["x"],
        },
        Case {
            name: "permanent child that stops normally is restarted",
            strategy: Strategy::OneForOne,
            children: &[("p", Restart::Permanent)],
            target: "p",
            command: || Command::Stop,
            expected: &["stop p#1", "start p#2"],
            gone: &[],
        },
    ];
    for case in cases {
        let log = Log::default();
        let root = tree(case.strategy, case.children, &log).await;
        let started: Vec<String> = case
            .children
            .iter()
            .map(|(id, _)| format!("start {id}#1"))
            .collect();
        assert_eq!(log.entries(), started, "{}: start order", case.name);

        let mut events = root.events().expect("events");
        let mut gone = Vec::new();
        for id in case.gone {
            gone.push(
                root.child::<Command>(id)
                    .await
                    .expect("child before the exit"),
            );
        }
        let target = root.child::<Command>(case.target).await.expect("target");
        target.send((case.command)()).expect("queued");
        // Wait for the supervisor to report the exit and for the expected entries to appear.
        let mut exited = false;
        let want = started.len() + case.expected.len();
        eventually(case.name, LIMIT, || {
            while let Ok(event) = events.try_recv() {
                exited |=
                    &*event.child == case.target && matches!(event.kind, EventKind::Exited(_));
            }
            let done = exited && log.len() >= want;
            async move { done }
        })
        .await;
        // A round trip through the supervisor's mailbox: it has finished reacting to the exit.
        let infos = root.which_children().await.expect("children");
        assert_eq!(
            log.since(case.children.len()),
            case.expected,
            "{}",
            case.name
        );
        for (id, handle) in case.gone.iter().zip(&gone) {
            assert!(
                infos.iter().all(|info| &*info.id != *id),
                "{}: {id} still listed",
                case.name
            );
            assert!(
                matches!(
                    handle.send(Command::Note(0)),
                    Err(garrison_supervisor::SendError::Closed(_))
                ),
                "{}: {id}'s handle still accepts messages",
                case.name
            );
        }
        root.stop().await.expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_start_in_order_and_stop_in_reverse() {
    let log = Log::default();
    let root = tree(Strategy::OneForOne, ALL_PERMANENT, &log).await;
    root.stop().await.expect("stop");
    assert_eq!(
        log.entries(),
        [
            "start a#1",
            "start b#1",
            "start c#1",
            "stop c#1",
            "stop b#1",
            "stop a#1"
        ]
    );
}
