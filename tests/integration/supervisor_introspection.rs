//! Introspection: which_children, count_children, a serialisable tree snapshot, and the DSL
//! building the same tree as the builder.

use std::time::Duration;

use garrison_supervisor::{ChildStatus, Start, TreeSnapshot, supervisor};
use garrison_tests::probe::{Command, Log, Probe, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsl_tree_reports_itself() {
    let log = Log::default();
    let probe = |log: &Log| Probe::start(log);
    let root = supervisor! {
        "node": one_for_one, intensity 5 per 10s {
            worker "matchmaker" => probe(&log), permanent;
            dynamic "rooms", max_children 10_000, transient;
            supervisor "gateway": rest_for_one, intensity 2 per 1s {
                worker "acceptor" => probe(&log), permanent, shutdown 5s;
                worker "metrics" => probe(&log), temporary, brutal_kill;
            }
            worker "audit" => probe(&log), transient, backoff 10ms..1s;
        }
    }
    .expect("valid tree")
    .start()
    .await
    .expect("starts");
    assert_eq!(
        log.entries(),
        [
            "start matchmaker#1",
            "start acceptor#1",
            "start metrics#1",
            "start audit#1"
        ]
    );

    let children = root.which_children().await.unwrap();
    let ids: Vec<&str> = children.iter().map(|child| &*child.id).collect();
    assert_eq!(ids, ["matchmaker", "rooms", "gateway", "audit"]);
    assert!(
        children
            .iter()
            .all(|child| child.status == ChildStatus::Running)
    );
    let counts = root.count_children().await.unwrap();
    assert_eq!(
        (
            counts.specs,
            counts.active,
            counts.supervisors,
            counts.workers
        ),
        (4, 4, 2, 2)
    );

    let matchmaker = root.child::<Command>("matchmaker").await.unwrap();
    matchmaker.send(Command::Panic).unwrap();
    eventually("restart", Duration::from_secs(10), || {
        let n = matchmaker.incarnations();
        async move { n == 2 }
    })
    .await;

    let snapshot = root.snapshot().await.unwrap();
    let rows: Vec<String> = snapshot
        .nodes
        .iter()
        .map(|node| {
            format!(
                "{} {} {} {} {:?} {}",
                node.parent.map_or("-".into(), |p| p.to_string()),
                node.id,
                node.kind,
                node.status,
                node.strategy,
                node.restarts
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            "- node supervisor running Some(\"one_for_one\") 0",
            "0 matchmaker worker running None 1",
            "0 rooms supervisor running Some(\"one_for_one\") 0",
            "0 gateway supervisor running Some(\"rest_for_one\") 0",
            "3 acceptor worker running None 0",
            "3 metrics worker running None 0",
            "0 audit worker running None 0",
        ]
    );
    // The snapshot is an rkyv archive type: it round-trips through bytes.
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&snapshot).unwrap();
    let back: TreeSnapshot = rkyv::from_bytes::<TreeSnapshot, rkyv::rancor::Error>(&bytes).unwrap();
    assert_eq!(back, snapshot);
    root.stop().await.unwrap();
}

#[tokio::test]
async fn builder_rejects_duplicate_ids_and_a_zero_period_naming_them() {
    use garrison_supervisor::{ChildSpec, Error, SupervisorBuilder};
    let log = Log::default();
    let duplicate = SupervisorBuilder::new("node")
        .child(ChildSpec::new("a", Probe::start(&log)))
        .child(ChildSpec::new(
            "a",
            Start::worker(|| Probe {
                log: Log::default(),
                failures: Default::default(),
            }),
        ))
        .build()
        .unwrap_err();
    assert_eq!(
        duplicate,
        Error::DuplicateChild {
            supervisor: "node".into(),
            child: "a".into()
        }
    );
    let zero = SupervisorBuilder::new("node")
        .intensity(3, Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(
        zero.to_string(),
        "supervisor node: restart intensity period must be positive"
    );
}
