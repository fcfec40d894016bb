//! Every accepted message ends handled or as a dead letter with a reason: through a give-up,
//! a failed activation (its snapshot quarantined), a `DropOldest` eviction; a kind missing from the
//! tree refuses instead of accepting; activation says why it runs; and by default a crash loses
//! nothing but the message that caused it.

use std::{sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use garrison_runtime::{Checkpoint, Entities, KindConfig, Refusal};
use garrison_supervisor::Overflow;
use garrison_tests::probe::eventually;
use tokio::sync::oneshot;

use crate::counter::{CURSED_TOTAL, Counter, Msg, add, get, start, start_recording};

const LIMIT: Duration = Duration::from_secs(10);

/// Holds entity `key` on a gate until the returned sender is used; waits until it is taken.
async fn hold(counters: &Entities<Counter>, key: u64) -> oneshot::Sender<()> {
    let (open, gate) = oneshot::channel();
    assert!(counters.send(&key, Msg::Gate(gate)).is_ok());
    eventually("the gate taken", LIMIT, || {
        let taken = counters.mailbox_depth(&key) == 0;
        async move { taken }
    })
    .await;
    open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_up_entity_dead_letters_every_message_still_queued() {
    let (counters, _, tree) = start(KindConfig {
        mailbox_capacity: 2_048,
        max_restarts: 3,
        restart_period: Duration::from_secs(60),
        ..KindConfig::default()
    })
    .await;
    let open = hold(&counters, 1).await;
    // 1,000 accepted messages, four of them poison: the fourth crash exceeds 3 restarts.
    let poisons = [100, 300, 500, 700];
    for seq in 0..1_000u32 {
        let message = if poisons.contains(&seq) {
            Msg::Poison
        } else {
            add(seq, 1)
        };
        assert!(counters.send(&1, message).is_ok(), "message {seq} accepted");
    }
    open.send(()).unwrap();
    eventually("every message accounted for", LIMIT, || {
        let letters = counters.dead_letters().len();
        async move { letters >= 1_000 - 697 }
    })
    .await;
    // The last checkpoint (taken after every message, the default) holds what was handled.
    let (tally, _) = get(&counters, 1).await;
    let letters = counters.dead_letters().snapshot();
    assert_eq!(
        tally.seen.len() + letters.len(),
        1_000,
        "handled ({}) + dead letters ({}) = accepted",
        tally.seen.len(),
        letters.len()
    );
    let crashed: Vec<&str> = letters
        .iter()
        .filter(|letter| letter.event_type == "poison")
        .map(|letter| letter.reason.as_str())
        .collect();
    assert_eq!(crashed, ["poisoned counter 1"; 4], "each poison once");
    let stranded = letters
        .iter()
        .filter(|letter| letter.event_type == "add")
        .collect::<Vec<_>>();
    assert_eq!(stranded.len(), 299, "everything behind the fourth poison");
    for letter in &stranded {
        assert!(
            letter
                .reason
                .starts_with("not delivered: the entity crashed more than 3 times"),
            "{}",
            letter.reason
        );
    }
    tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_is_dead_lettered() {
    let (counters, _, tree) = start(KindConfig {
        mailbox_capacity: 4,
        overflow: Overflow::DropOldest,
        ..KindConfig::default()
    })
    .await;
    let open = hold(&counters, 2).await;
    for seq in 0..10 {
        assert!(counters.send(&2, add(seq, 1)).is_ok());
    }
    open.send(()).unwrap();
    eventually("the queue drained", LIMIT, || {
        let drained = counters.mailbox_depth(&2) == 0;
        async move { drained }
    })
    .await;
    let (tally, _) = get(&counters, 2).await;
    assert_eq!(tally.seen.len(), 4);
    let letters = counters.dead_letters().snapshot();
    assert_eq!(letters.len(), 6, "{letters:?}");
    assert!(
        letters
            .iter()
            .all(|letter| letter.reason.starts_with("evicted"))
    );
    tree.stop().await.unwrap();
}

// Current-thread: the activation starts only once the test yields, so all three messages are
// queued for it (a message sent after the failure would activate the key fresh, and be handled).
#[tokio::test]
async fn a_snapshot_that_cannot_be_restored_is_quarantined_and_its_queue_dead_lettered() {
    let (counters, activations, causes, tree) = start_recording(KindConfig::default()).await;
    let corrupted = Bytes::from_static(b"not a snapshot at all, just bytes");
    counters.register_passivated(9, corrupted.clone());
    for seq in 0..3 {
        assert!(counters.send(&9, add(seq, 1)).is_ok());
    }
    eventually("the queue dead-lettered", LIMIT, || {
        let letters = counters.dead_letters().len();
        async move { letters == 3 }
    })
    .await;
    for letter in counters.dead_letters().snapshot() {
        assert!(
            letter
                .reason
                .starts_with("not delivered: activation failed: snapshot refused:"),
            "{}",
            letter.reason
        );
    }
    let quarantined = counters.quarantined();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].snapshot, corrupted, "kept exactly as it was");
    assert_eq!(quarantined[0].key, "9");
    assert!(quarantined[0].reason.starts_with("snapshot refused:"));
    assert_eq!(activations.load(Ordering::SeqCst), 0, "activate never ran");
    // The next message activates the entity fresh.
    let (tally, _) = get(&counters, 9).await;
    assert_eq!(tally.total, 0);
    assert_eq!(*causes.lock().unwrap(), ["fresh"]);
    tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activate_that_panics_on_its_restored_state_is_abandoned_not_retried() {
    let (counters, _, causes, tree) = start_recording(KindConfig::default()).await;
    let mut events = counters.supervisor().events().unwrap();
    assert!(counters.send(&4, add(0, CURSED_TOTAL)).is_ok());
    let _ = get(&counters, 4).await;
    let open = hold(&counters, 4).await;
    assert!(counters.send(&4, Msg::Poison).is_ok());
    assert!(counters.send(&4, add(1, 1)).is_ok());
    open.send(()).unwrap();
    eventually("the message behind the crash dead-lettered", LIMIT, || {
        let letters = counters.dead_letters().len();
        async move { letters == 2 }
    })
    .await;
    let letters = counters.dead_letters().snapshot();
    assert_eq!(letters[0].event_type, "poison");
    assert_eq!(letters[1].event_type, "add");
    assert!(
        letters[1]
            .reason
            .starts_with("not delivered: activation failed: activate panicked:"),
        "{}",
        letters[1].reason
    );
    assert_eq!(counters.quarantined().len(), 1, "the cursed checkpoint");
    let mut abandoned = false;
    while let Ok(event) = events.try_recv() {
        abandoned |= matches!(
            event.kind,
            garrison_supervisor::EventKind::Exited(garrison_supervisor::ExitReason::Abandoned(_))
        );
    }
    assert!(
        abandoned,
        "the lifecycle events report the abandoned restart"
    );
    let (tally, _) = get(&counters, 4).await;
    assert_eq!(tally.total, 0, "fresh, not from the quarantined checkpoint");
    assert_eq!(
        *causes.lock().unwrap(),
        ["fresh", "restart", "fresh"],
        "one failed restart, no retry"
    );
    tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_missing_from_the_tree_refuses_and_says_how_to_add_it() {
    let counters = Entities::new(Counter::default(), KindConfig::default()).unwrap();
    let refused = counters.send(&1, add(0, 1)).expect_err("no tree runs it");
    assert_eq!(refused.reason, Refusal::KindNotRunning { kind: "counter" });
    assert!(matches!(refused.message, Msg::Add { seq: 0, .. }));
    let text = refused.reason.to_string();
    assert!(
        text.contains("entity kind counter is not running") && text.contains("supervisor!"),
        "{text}"
    );
    assert!(counters.is_empty(), "nothing was registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_crash_restores_everything_handled_before_it() {
    let (counters, _, causes, tree) = start_recording(KindConfig::default()).await;
    for seq in 0..10 {
        assert!(counters.send(&3, add(seq, 1)).is_ok());
    }
    assert!(counters.send(&3, Msg::Poison).is_ok());
    let (tally, incarnation) = get(&counters, 3).await;
    assert_eq!(incarnation, 2);
    assert_eq!(tally.total, 10, "no state lost with the default checkpoint");
    assert_eq!(*causes.lock().unwrap(), ["fresh", "restart"]);
    tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activate_is_told_why_it_runs() {
    let (counters, _, causes, tree) = start_recording(KindConfig {
        checkpoint: Checkpoint::OnDemand,
        ..KindConfig::default()
    })
    .await;
    assert!(counters.send(&6, add(0, 5)).is_ok());
    // OnDemand and never asked: the crash restarts it with nothing (and a warning in the log).
    assert!(counters.send(&6, Msg::Poison).is_ok());
    let (lost, _) = get(&counters, 6).await;
    assert_eq!(lost.total, 0);
    assert!(counters.send(&6, Msg::Rest).is_ok());
    eventually("the passivation", LIMIT, || {
        let passivated = counters.passivated_snapshot(&6).is_some();
        async move { passivated }
    })
    .await;
    let _ = get(&counters, 6).await;
    assert_eq!(
        *causes.lock().unwrap(),
        ["fresh", "restart", "reactivation"]
    );
    tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_that_ends_handles_what_is_queued_then_is_forgotten() {
    let (counters, _, causes, tree) = start_recording(KindConfig::default()).await;
    assert!(counters.send(&8, add(0, 5)).is_ok());
    let open = hold(&counters, 8).await;
    assert!(counters.send(&8, Msg::End).is_ok());
    assert!(counters.send(&8, add(1, 5)).is_ok());
    assert!(counters.send(&8, add(2, 5)).is_ok());
    open.send(()).unwrap();
    eventually("the entity forgotten", LIMIT, || {
        let gone = counters.is_empty();
        async move { gone }
    })
    .await;
    assert!(
        counters.dead_letters().is_empty(),
        "the messages behind the stop were handled: {:?}",
        counters.dead_letters().snapshot()
    );
    // Its checkpoint went with it: the next message activates it fresh.
    let (tally, _) = get(&counters, 8).await;
    assert_eq!(tally.total, 0);
    assert_eq!(*causes.lock().unwrap(), ["fresh", "fresh"]);
    tree.stop().await.unwrap();
}
