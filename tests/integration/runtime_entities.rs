//! Entities: single activation under races, bounded mailboxes with both overflow policies,
//! crash recovery from a checkpoint with queued messages delivered and the poison dead-lettered
//! once, and passivation that reactivates to the exact state.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use garrison_runtime::{Checkpoint, KindConfig, Refusal};
use garrison_supervisor::Overflow;
use garrison_tests::probe::eventually;
use tokio::sync::oneshot;

use super::counter::{Msg, Tally, get, start};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_sends_activate_exactly_one_incarnation() {
    let (counters, activations, tree) = start(KindConfig {
        mailbox_capacity: 4096,
        ..KindConfig::default()
    })
    .await;
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let mut senders = Vec::new();
    for sender in 0..64u32 {
        let counters = counters.clone();
        let barrier = barrier.clone();
        senders.push(tokio::spawn(async move {
            barrier.wait().await;
            for seq in 0..10 {
                assert!(
                    counters
                        .send(
                            &9,
                            Msg::Add {
                                sender,
                                seq,
                                amount: 1
                            }
                        )
                        .is_ok()
                );
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let (tally, incarnation) = get(&counters, 9).await;
    assert_eq!(
        activations.load(Ordering::SeqCst),
        1,
        "one activation for 64 racing senders"
    );
    assert_eq!(incarnation, 1);
    assert_eq!(tally.total, 640, "every message handled");
    for sender in 0..64 {
        let order: Vec<u32> = tally
            .seen
            .iter()
            .filter(|(s, _)| *s == sender)
            .map(|(_, seq)| *seq)
            .collect();
        assert_eq!(
            order,
            (0..10).collect::<Vec<_>>(),
            "sender {sender}'s messages in the order sent"
        );
    }
    tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mailbox_rejects_or_drops_the_oldest_by_kind_policy() {
    for overflow in [Overflow::Reject, Overflow::DropOldest] {
        let (counters, _, tree) = start(KindConfig {
            mailbox_capacity: 3,
            overflow,
            ..KindConfig::default()
        })
        .await;
        let (open, gate) = oneshot::channel();
        assert!(counters.send(&1, Msg::Gate(gate)).is_ok());
        eventually("the gate taken", LIMIT, || {
            let taken = counters.mailbox_depth(&1) == 0;
            async move { taken }
        })
        .await;
        for seq in 0..3 {
            assert!(
                counters
                    .send(
                        &1,
                        Msg::Add {
                            sender: 0,
                            seq,
                            amount: 1
                        }
                    )
                    .is_ok()
            );
        }
        let fourth = counters.send(
            &1,
            Msg::Add {
                sender: 0,
                seq: 3,
                amount: 1,
            },
        );
        assert_eq!(
            counters.mailbox_depth(&1),
            3,
            "depth is observable and bounded"
        );
        open.send(()).unwrap();
        // Ask only once the queue has drained: a `Get` into a full mailbox would itself be
        // refused, or would evict a message.
        eventually("the queue drained", LIMIT, || {
            let drained = counters.mailbox_depth(&1) == 0;
            async move { drained }
        })
        .await;
        let (tally, _) = get(&counters, 1).await;
        let seqs: Vec<u32> = tally.seen.iter().map(|(_, seq)| *seq).collect();
        match overflow {
            Overflow::Reject => {
                let refused = fourth.expect_err("a full mailbox refuses");
                assert_eq!(refused.reason, Refusal::MailboxFull { kind: "counter" });
                assert!(
                    matches!(refused.message, Msg::Add { seq: 3, .. }),
                    "the message is handed back"
                );
                assert_eq!(seqs, [0, 1, 2]);
            }
            Overflow::DropOldest => {
                assert!(fourth.is_ok());
                assert_eq!(seqs, [1, 2, 3], "the oldest was evicted");
            }
        }
        tree.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_restores_the_checkpoint_delivers_the_queue_and_dead_letters_the_poison_once() {
    let config = KindConfig {
        checkpoint: Checkpoint::EveryMessages(1),
        ..KindConfig::default()
    };
    let (counters, activations, tree) = start(config).await;
    for seq in 0..3 {
        assert!(
            counters
                .send(
                    &5,
                    Msg::Add {
                        sender: 0,
                        seq,
                        amount: 10
                    }
                )
                .is_ok()
        );
    }
    let (before, _) = get(&counters, 5).await;
    let (open, gate) = oneshot::channel();
    assert!(counters.send(&5, Msg::Gate(gate)).is_ok());
    assert!(counters.send(&5, Msg::Poison).is_ok());
    for seq in 3..6 {
        assert!(
            counters
                .send(
                    &5,
                    Msg::Add {
                        sender: 0,
                        seq,
                        amount: 10
                    }
                )
                .is_ok()
        );
    }
    open.send(()).unwrap();
    let (after, incarnation) = get(&counters, 5).await;
    assert_eq!(incarnation, 2, "restarted once");
    assert_eq!(activations.load(Ordering::SeqCst), 2);
    assert_eq!(before.total, 30);
    assert_eq!(
        after.total, 60,
        "checkpointed 30, then the three queued adds"
    );
    assert_eq!(
        after.seen.iter().map(|(_, seq)| *seq).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );
    let letters = counters.dead_letters().snapshot();
    assert_eq!(
        letters.len(),
        1,
        "the poison is dead-lettered once: {letters:?}"
    );
    assert_eq!(
        (letters[0].event_type, letters[0].key.as_str()),
        ("poison", "5")
    );
    assert_eq!(letters[0].reason, "poisoned counter 5");
    tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivation_keeps_only_the_snapshot_and_reactivates_to_the_exact_state() {
    let config = KindConfig {
        passivate_after: Some(Duration::from_millis(30)),
        ..KindConfig::default()
    };
    let (counters, activations, tree) = start(config).await;
    for seq in 0..4 {
        assert!(
            counters
                .send(
                    &3,
                    Msg::Add {
                        sender: 7,
                        seq,
                        amount: -2
                    }
                )
                .is_ok()
        );
    }
    let (state, _) = get(&counters, 3).await;
    eventually("idle passivation", LIMIT, || {
        let passivated = counters.passivated_snapshot(&3).is_some();
        async move { passivated }
    })
    .await;
    assert!(!counters.is_active(&3));
    let snapshot = counters.passivated_snapshot(&3).unwrap();
    assert!(
        snapshot.len() < 128,
        "a passivated counter is {} bytes",
        snapshot.len()
    );
    let (restored, incarnation) = get(&counters, 3).await;
    assert_eq!(restored, state, "reactivated to the exact state");
    assert_eq!(
        incarnation, 1,
        "a reactivation is a fresh incarnation of a new activation"
    );
    assert_eq!(activations.load(Ordering::SeqCst), 2);
    tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_can_ask_to_passivate() {
    let (counters, _, tree) = start(KindConfig::default()).await;
    assert!(
        counters
            .send(
                &4,
                Msg::Add {
                    sender: 0,
                    seq: 0,
                    amount: 5
                }
            )
            .is_ok()
    );
    assert!(counters.send(&4, Msg::Rest).is_ok());
    eventually("passivation on request", LIMIT, || {
        let passivated = counters.passivated_snapshot(&4).is_some();
        async move { passivated }
    })
    .await;
    assert_eq!(get(&counters, 4).await.0.total, 5);
    tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivated_registrations_hold_only_bytes_until_their_first_message() {
    // Registering without running: the registry keeps bytes only. (The memory benchmark
    // measures RSS; this checks the behaviour: each reactivates from its own bytes.)
    let (counters, activations, tree) = start(KindConfig::default()).await;
    for key in 0..10_000u64 {
        let tally = Tally {
            total: key as i64,
            seen: vec![],
        };
        counters.register_passivated(key, garrison_protocol::snapshot::write(&tally).unwrap());
    }
    assert_eq!(counters.len(), 10_000);
    assert_eq!(activations.load(Ordering::SeqCst), 0);
    assert_eq!(get(&counters, 4_321).await.0.total, 4_321);
    assert_eq!(activations.load(Ordering::SeqCst), 1);
    tree.stop().await.unwrap();
}
