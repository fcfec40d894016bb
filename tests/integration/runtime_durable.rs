//! Durable entity state: a kind's checkpoints and logs reach its store (write-behind,
//! write-through), come back in a new registry on the same store (as after a killed process),
//! with the log replayed; an ended entity's record goes; damaged records are set aside and the
//! entity goes on from what was good; a fenced writer stops; an activation writes with the
//! generation it activated with; a released entity stops and comes back from its store; a
//! handed-off entity writes through what it handled and sends the rest on; past its kind's lease
//! an entity handles nothing; a store outage degrades durability without stopping entities, and
//! it catches up when the store is back.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use garrison_protocol::Snapshot;
use garrison_runtime::{
    Activation, Checkpoint, Durability, Entities, Entity, EntityContext, EntityMessage,
    HandlerError, KindConfig, Reply,
    store::{MemoryStore, RedbStore, RedisStore, StateStore, Store, Write},
};
use garrison_supervisor::{SupervisorBuilder, SupervisorRef};
use garrison_tests::probe::eventually;
use rkyv::{Archive, Deserialize, Serialize};

use crate::store_conformance::{TempDir, namespace, redis_url};

const LIMIT: Duration = Duration::from_secs(10);

/// A ledger: every added amount, logged one entry per add, a snapshot every fifth add.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
struct Ledger {
    amounts: Vec<u32>,
    /// How the current incarnation was activated (`Activation::label`).
    woke: String,
}

impl Snapshot for Ledger {
    const SCHEMA: &'static str = "test.ledger";
    const VERSION: u16 = 1;
}

enum Msg {
    Add(u32),
    Get(Reply<Ledger>),
    End,
    /// Holds the entity until notified (what queues meanwhile waits behind it).
    Hold(Arc<tokio::sync::Notify>),
}

impl EntityMessage for Msg {
    fn event_type(&self) -> &'static str {
        match self {
            Msg::Add(_) => "add",
            Msg::Get(_) => "get",
            Msg::End => "end",
            Msg::Hold(_) => "hold",
        }
    }
}

struct Accounts {
    replayed: Arc<AtomicU64>,
    started: Arc<AtomicU64>,
}

impl Entity for Accounts {
    const KIND: &'static str = "ledger";
    type Key = u64;
    type State = Ledger;
    type Message = Msg;

    async fn activate(
        &self,
        _: &u64,
        activation: Activation<Ledger>,
    ) -> Result<Ledger, HandlerError> {
        let woke = activation.label().to_owned();
        let mut ledger = activation.unwrap_or_default();
        if ledger.amounts.contains(&13) {
            return Err("an unlucky ledger".into());
        }
        ledger.woke = woke;
        Ok(ledger)
    }

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        message: Msg,
        ledger: &mut Ledger,
    ) -> Result<(), HandlerError> {
        match message {
            Msg::Add(amount) => {
                ledger.amounts.push(amount);
                if amount == 666 {
                    return Err("cursed amount".into());
                }
                if ledger.amounts.len().is_multiple_of(5) {
                    context.checkpoint();
                } else {
                    context.log(Bytes::copy_from_slice(&amount.to_le_bytes()));
                }
            }
            Msg::Get(reply) => {
                reply.send(ledger.clone());
            }
            Msg::End => context.stop(),
            Msg::Hold(until) => until.notified().await,
        }
        Ok(())
    }

    fn replay(&self, _: &u64, ledger: &mut Ledger, entry: &[u8]) -> Result<(), HandlerError> {
        let amount: [u8; 4] = entry.try_into().map_err(|_| "a ledger entry is 4 bytes")?;
        ledger.amounts.push(u32::from_le_bytes(amount));
        self.replayed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn started(&self, _: &mut EntityContext<'_, Self>, _: &mut Ledger) -> Result<(), HandlerError> {
        self.started.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// One "process": a registry on `store` in its own tree.
struct Node {
    ledgers: Entities<Accounts>,
    replayed: Arc<AtomicU64>,
    started: Arc<AtomicU64>,
    tree: SupervisorRef,
}

async fn node(durability: Durability) -> Node {
    node_with(durability, ledger_config()).await
}

/// The ledgers' settings: they checkpoint when a handler asks (every fifth add).
fn ledger_config() -> KindConfig {
    KindConfig {
        checkpoint: Checkpoint::OnDemand,
        ..KindConfig::default()
    }
}

async fn node_with(durability: Durability, config: KindConfig) -> Node {
    let (replayed, started) = (Arc::default(), Arc::default());
    let ledgers = Entities::new(
        Accounts {
            replayed: Arc::clone(&replayed),
            started: Arc::clone(&started),
        },
        KindConfig {
            durability,
            ..config
        },
    )
    .unwrap();
    let tree = SupervisorBuilder::new("game")
        .child(garrison_supervisor::ChildSpec::new(
            "ledgers",
            ledgers.start(),
        ))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    Node {
        ledgers,
        replayed,
        started,
        tree,
    }
}

async fn get(ledgers: &Entities<Accounts>, key: u64) -> Ledger {
    ledgers
        .call(&key, Msg::Get, LIMIT)
        .await
        .expect("the ledger answers")
}

fn amounts(range: std::ops::Range<u32>) -> Vec<u32> {
    range.collect()
}

/// Writes, stops the "process" (its tree and registry dropped, as a killed one's would be gone),
/// starts another on the same store: the state is back, snapshot plus log replayed.
async fn survives_a_restart(store: Store) {
    let first = node(Durability::write_behind(store.clone())).await;
    for amount in 1..=7 {
        first.ledgers.send(&1, Msg::Add(amount)).ok().unwrap();
    }
    assert_eq!(get(&first.ledgers, 1).await.amounts, amounts(1..8));
    assert!(
        first.ledgers.flush(LIMIT).await,
        "everything reaches the store"
    );
    let stats = first.ledgers.durability().unwrap();
    assert!(stats.writes >= 1 && stats.bytes > 0, "{stats:?}");
    assert_eq!(stats.pending, 0);
    // Stored: the snapshot at 5, and entries 6 and 7 after it.
    let stored = store.get("ledger", "1").await.unwrap().expect("a record");
    let log = store
        .read_log("ledger", "1", stored.log_from)
        .await
        .unwrap();
    assert_eq!(
        log.entries.len(),
        2,
        "two entries after the fifth add's snapshot"
    );
    first.tree.stop().await.unwrap();
    drop(first);

    let second = node(Durability::write_behind(store.clone())).await;
    let ledger = get(&second.ledgers, 1).await;
    assert_eq!(
        ledger.amounts,
        amounts(1..8),
        "the snapshot, then the log replayed"
    );
    assert_eq!(ledger.woke, "recovery");
    assert_eq!(second.replayed.load(Ordering::Relaxed), 2);
    assert_eq!(second.ledgers.durability().unwrap().recovered, 1);
    // It goes on from there, and a fresh key is fresh.
    second.ledgers.send(&1, Msg::Add(8)).ok().unwrap();
    assert_eq!(get(&second.ledgers, 1).await.amounts, amounts(1..9));
    assert_eq!(get(&second.ledgers, 2).await.woke, "fresh");
    second.tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_on_the_memory_store() {
    survives_a_restart(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_on_redb() {
    let dir = TempDir::new("durable-redb");
    survives_a_restart(Arc::new(RedbStore::open(&dir.0).unwrap())).await;
    // And across the database being closed and opened again (once the last handle is gone: the
    // kind's writer lets go of its store within a second of the kind being dropped).
    let deadline = std::time::Instant::now() + LIMIT;
    let store: Store = loop {
        match RedbStore::open(&dir.0) {
            Ok(store) => break Arc::new(store),
            Err(error) => {
                assert!(std::time::Instant::now() < deadline, "{error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let third = node(Durability::write_behind(store)).await;
    assert_eq!(get(&third.ledgers, 1).await.amounts, amounts(1..9));
    third.tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_on_redis() {
    let Some(url) = redis_url() else { return };
    let store = RedisStore::connect(&url, &namespace("durable"))
        .await
        .unwrap();
    survives_a_restart(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_restarts_from_the_snapshot_and_the_log_without_the_crashing_message() {
    let store: Store = Arc::new(MemoryStore::new());
    let node = node(Durability::write_behind(store)).await;
    for amount in [1, 2, 3, 4, 5, 6, 7, 666, 8] {
        node.ledgers.send(&1, Msg::Add(amount)).ok().unwrap();
    }
    let ledger = get(&node.ledgers, 1).await;
    // 666 crashed it (and was pushed to the state before the crash): the restart replays the
    // log after the fifth add, so only 666 is gone.
    assert_eq!(ledger.amounts, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(ledger.woke, "restart");
    assert_eq!(node.replayed.load(Ordering::Relaxed), 2, "entries 6 and 7");
    assert_eq!(
        node.started.load(Ordering::Relaxed),
        2,
        "once per incarnation"
    );
    assert_eq!(node.ledgers.dead_letters().len(), 1);
    node.tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_stores_a_message_before_the_next_is_handled() {
    let store: Arc<MemoryStore> = Arc::new(MemoryStore::new());
    let node = node(Durability::write_through(store.clone())).await;
    for amount in 1..=6 {
        node.ledgers.send(&9, Msg::Add(amount)).ok().unwrap();
        // The Get is handled after Add(amount) is stored: the store has it when it answers.
        get(&node.ledgers, 9).await;
        let stored = store.get("ledger", "9").await.unwrap();
        let count = match stored {
            None => 0,
            Some(stored) => {
                let log = store
                    .read_log("ledger", "9", stored.log_from)
                    .await
                    .unwrap();
                let snapshot: Ledger = garrison_protocol::snapshot::read(stored.snapshot).unwrap();
                snapshot.amounts.len() + log.entries.len()
            }
        };
        assert_eq!(count, amount as usize, "add {amount} is in the store");
    }
    node.tree.stop().await.unwrap();
}

/// A checkpoint of a state its message left as it was writes nothing: a kind checkpointing after
/// every message answers reads without a store write (nor, written through, a wait for one),
/// and still writes every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_leaves_the_state_as_it_was_writes_nothing() {
    let store: Arc<MemoryStore> = Arc::new(MemoryStore::new());
    let node = node_with(
        Durability::write_through(store.clone()),
        KindConfig {
            checkpoint: Checkpoint::EveryMessages(1),
            ..KindConfig::default()
        },
    )
    .await;
    let ledgers = &node.ledgers;
    let writes = || ledgers.durability().expect("a durable kind").writes;
    ledgers.send(&4, Msg::Add(1)).ok().unwrap();
    // Handled after the add was written through, and counted.
    get(ledgers, 4).await;
    let after_add = writes();
    assert!(after_add >= 1, "the add was written");
    for _ in 0..5 {
        assert_eq!(get(ledgers, 4).await.amounts, vec![1]);
    }
    assert_eq!(writes(), after_add, "reads wrote nothing");
    ledgers.send(&4, Msg::Add(2)).ok().unwrap();
    get(ledgers, 4).await;
    assert!(writes() > after_add, "a change is written");
    let stored = store.get("ledger", "4").await.unwrap().expect("a record");
    let snapshot: Ledger = garrison_protocol::snapshot::read(stored.snapshot).unwrap();
    assert_eq!(snapshot.amounts, vec![1, 2]);
    node.tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_entity_leaves_no_record_and_recover_stored_runs_the_rest() {
    let store: Store = Arc::new(MemoryStore::new());
    let first = node(Durability::write_behind(store.clone())).await;
    for key in 1..=3 {
        first.ledgers.send(&key, Msg::Add(5)).ok().unwrap();
        get(&first.ledgers, key).await;
    }
    first.ledgers.send(&2, Msg::End).ok().unwrap();
    eventually("ledger 2 ended", LIMIT, || {
        let ended = !first.ledgers.is_active(&2);
        async move { ended }
    })
    .await;
    assert!(first.ledgers.flush(LIMIT).await);
    let mut keys = store.list("ledger").await.unwrap();
    keys.sort();
    assert_eq!(keys, ["1", "3"], "the ended ledger's record is deleted");
    first.tree.stop().await.unwrap();

    let second = node(Durability::write_behind(store)).await;
    assert_eq!(second.ledgers.recover_stored().await.unwrap(), 2);
    eventually("both stored ledgers running", LIMIT, || {
        let running = second.ledgers.is_active(&1) && second.ledgers.is_active(&3);
        let started = second.started.load(Ordering::Relaxed) == 2;
        async move { running && started }
    })
    .await;
    assert!(!second.ledgers.is_active(&2));
    assert_eq!(get(&second.ledgers, 2).await.woke, "fresh");
    second.tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_records_are_set_aside_and_the_entity_goes_on_from_what_was_good() {
    let store = Arc::new(MemoryStore::new());
    // 1: a truncated record. 2: another schema's snapshot. 3: a good snapshot, a good entry, a
    // damaged entry.
    store.put_raw_record("ledger", "1", Bytes::from_static(b"GRS1\x01"));
    #[derive(Archive, Serialize, Deserialize, Default)]
    struct Other {
        x: u64,
    }
    impl Snapshot for Other {
        const SCHEMA: &'static str = "test.other";
        const VERSION: u16 = 1;
    }
    let other = garrison_protocol::snapshot::write(&Other { x: 3 }).unwrap();
    let good = garrison_protocol::snapshot::write(&Ledger {
        amounts: vec![1, 2, 3, 4, 5],
        woke: String::new(),
    })
    .unwrap();
    let put = |key: &str, snapshot: Bytes| Write::Put {
        kind: "ledger".into(),
        key: key.into(),
        generation: 0,
        log_from: 10,
        snapshot,
    };
    store
        .write(&[put("2", other), put("3", good)])
        .await
        .unwrap();
    store
        .write(&[Write::Append {
            kind: "ledger".into(),
            key: "3".into(),
            generation: 0,
            entries: vec![garrison_runtime::store::LogEntry {
                seq: 10,
                bytes: Bytes::copy_from_slice(&6u32.to_le_bytes()),
            }],
        }])
        .await
        .unwrap();
    store.put_raw_entry("ledger", "3", 11, Bytes::from_static(b"GRL1 damaged"));

    let node = node(Durability::write_behind(store.clone())).await;
    assert_eq!(
        get(&node.ledgers, 1).await,
        Ledger {
            amounts: vec![],
            woke: "fresh".into()
        }
    );
    assert_eq!(get(&node.ledgers, 2).await.woke, "fresh");
    let three = get(&node.ledgers, 3).await;
    assert_eq!(
        three.amounts,
        [1, 2, 3, 4, 5, 6],
        "the snapshot and the good entry"
    );
    assert_eq!(three.woke, "recovery");

    let aside = store.set_aside_records("ledger").await.unwrap();
    let mut reasons: Vec<(&str, &str)> = aside
        .iter()
        .map(|record| (record.key.as_str(), record.reason.as_str()))
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].1.contains("record damaged"), "{reasons:?}");
    assert!(
        reasons[1].1.contains("stored snapshot refused"),
        "{reasons:?}"
    );
    assert!(reasons[2].1.contains("log entry 11"), "{reasons:?}");
    assert_eq!(node.ledgers.durability().unwrap().set_aside, 3);
    assert_eq!(
        node.ledgers.quarantined().len(),
        2,
        "the snapshots are kept here too"
    );
    // Ledger 3 wrote a new record at once: a restart finds the good state.
    assert!(node.ledgers.flush(LIMIT).await);
    let stored = store.get("ledger", "3").await.unwrap().expect("rewritten");
    let rewritten: Ledger = garrison_protocol::snapshot::read(stored.snapshot).unwrap();
    assert_eq!(rewritten.amounts, [1, 2, 3, 4, 5, 6]);
    node.tree.stop().await.unwrap();
}

/// A log whose first entry the module refuses is dropped, and the entity checkpoints at once:
/// even when that checkpoint is byte for byte the stored snapshot, it is written, which clears
/// the refused entries from the store (a later recovery does not meet them again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_log_is_cleared_from_the_store_even_when_the_state_is_the_stored_snapshot() {
    let store = Arc::new(MemoryStore::new());
    let snapshot = garrison_protocol::snapshot::write(&Ledger {
        amounts: vec![1, 2, 3, 4, 5],
        // What `activate` sets on a recovery: the recovered state is the stored bytes.
        woke: "recovery".into(),
    })
    .unwrap();
    store
        .write(&[
            Write::Put {
                kind: "ledger".into(),
                key: "4".into(),
                generation: 0,
                log_from: 10,
                snapshot,
            },
            Write::Append {
                kind: "ledger".into(),
                key: "4".into(),
                generation: 0,
                // Three bytes: `replay` refuses it.
                entries: vec![garrison_runtime::store::LogEntry {
                    seq: 10,
                    bytes: Bytes::from_static(b"bad"),
                }],
            },
        ])
        .await
        .unwrap();
    let node = node(Durability::write_behind(store.clone())).await;
    assert_eq!(get(&node.ledgers, 4).await.amounts, [1, 2, 3, 4, 5]);
    assert!(node.ledgers.flush(LIMIT).await);
    let stored = store.get("ledger", "4").await.unwrap().expect("a record");
    let log = store
        .read_log("ledger", "4", stored.log_from)
        .await
        .unwrap();
    assert!(log.entries.is_empty(), "the refused entry is gone");
    node.tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_writer_stops_writing_what_another_owner_holds() {
    let store: Store = Arc::new(MemoryStore::new());
    let node = node(Durability::write_behind(store.clone())).await;
    node.ledgers.set_store_generation(1);
    for amount in 1..=5 {
        node.ledgers.send(&4, Msg::Add(amount)).ok().unwrap();
    }
    get(&node.ledgers, 4).await;
    assert!(node.ledgers.flush(LIMIT).await);
    // Another owner takes ledger 4 with a higher generation.
    let theirs = garrison_protocol::snapshot::write(&Ledger::default()).unwrap();
    let taken = store
        .write(&[Write::Put {
            kind: "ledger".into(),
            key: "4".into(),
            generation: 2,
            log_from: 0,
            snapshot: theirs.clone(),
        }])
        .await
        .unwrap();
    assert_eq!(taken, [garrison_runtime::store::Outcome::Written]);
    for amount in 6..=10 {
        node.ledgers.send(&4, Msg::Add(amount)).ok().unwrap();
    }
    get(&node.ledgers, 4).await;
    assert!(node.ledgers.flush(LIMIT).await);
    assert!(node.ledgers.durability().unwrap().fenced >= 1);
    let stored = store.get("ledger", "4").await.unwrap().unwrap();
    assert_eq!(
        (stored.generation, stored.snapshot),
        (2, theirs),
        "the new owner's state stands"
    );
    node.tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_activation_writes_with_the_generation_it_activated_with() {
    let store: Store = Arc::new(MemoryStore::new());
    let node = node(Durability::write_behind(store.clone())).await;
    // As a fleet node fences: the token of the key's shard as this node holds it now.
    let token = Arc::new(AtomicU64::new(5));
    let held = Arc::clone(&token);
    node.ledgers
        .fence_by(move |_key: &u64| Some(held.load(Ordering::Relaxed)));
    let generation = |key: &'static str| {
        let store = store.clone();
        async move { store.get("ledger", key).await.unwrap().unwrap().generation }
    };
    node.ledgers.send(&4, Msg::Add(1)).ok().unwrap();
    get(&node.ledgers, 4).await;
    assert!(node.ledgers.flush(LIMIT).await);
    assert_eq!(generation("4").await, 5, "activated while the token was 5");

    // The node's token moves on (its shard moved away and back, say): the running activation
    // keeps the token it started with; a new one takes the new token.
    token.store(9, Ordering::Relaxed);
    for amount in 2..=5 {
        // The fifth add writes a snapshot.
        node.ledgers.send(&4, Msg::Add(amount)).ok().unwrap();
    }
    node.ledgers.send(&6, Msg::Add(1)).ok().unwrap();
    assert_eq!(get(&node.ledgers, 4).await.amounts, amounts(1..6));
    get(&node.ledgers, 6).await;
    assert!(node.ledgers.flush(LIMIT).await);
    assert_eq!(
        generation("4").await,
        5,
        "ledger 4's snapshot, at its own token"
    );
    assert_eq!(generation("6").await, 9);
    let written: Ledger = garrison_protocol::snapshot::read(
        store.get("ledger", "4").await.unwrap().unwrap().snapshot,
    )
    .unwrap();
    assert_eq!(written.amounts, amounts(1..6));

    // An owner with a newer token (7) writes ledger 4: the old activation is refused from then
    // on, whatever token this node holds for new activations.
    let theirs = garrison_protocol::snapshot::write(&Ledger::default()).unwrap();
    store
        .write(&[Write::Put {
            kind: "ledger".into(),
            key: "4".into(),
            generation: 7,
            log_from: 0,
            snapshot: theirs.clone(),
        }])
        .await
        .unwrap();
    let fenced = node.ledgers.durability().unwrap().fenced;
    for amount in 6..=10 {
        node.ledgers.send(&4, Msg::Add(amount)).ok().unwrap();
    }
    get(&node.ledgers, 4).await;
    assert!(node.ledgers.flush(LIMIT).await);
    assert!(node.ledgers.durability().unwrap().fenced > fenced);
    let stored = store.get("ledger", "4").await.unwrap().unwrap();
    assert_eq!((stored.generation, stored.snapshot), (7, theirs));
    node.tree.stop().await.unwrap();
}

// One thread: the messages sent before `release` are still queued when it runs.
#[tokio::test]
async fn a_released_entity_stops_here_its_queued_messages_are_dead_lettered_and_it_returns_from_its_store()
 {
    let store: Store = Arc::new(MemoryStore::new());
    let node = node(Durability::write_behind(store.clone())).await;
    for amount in 1..=5 {
        // The fifth add writes a snapshot.
        node.ledgers.send(&2, Msg::Add(amount)).ok().unwrap();
    }
    node.ledgers.send(&3, Msg::Add(1)).ok().unwrap();
    assert_eq!(get(&node.ledgers, 2).await.amounts, amounts(1..6));
    get(&node.ledgers, 3).await;
    assert!(node.ledgers.flush(LIMIT).await);
    for amount in 6..=8 {
        node.ledgers.send(&2, Msg::Add(amount)).ok().unwrap();
    }

    let released = node
        .ledgers
        .release(|key| *key == 2, "test: its shard moved");
    assert_eq!(released, 1);
    assert!(!node.ledgers.is_active(&2));
    assert!(node.ledgers.is_active(&3), "only what was picked");
    let letters = node.ledgers.dead_letters().snapshot();
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert!(
        letters
            .iter()
            .all(|letter| letter.key == "2"
                && letter.reason.contains("released: test: its shard moved")),
        "{letters:?}"
    );
    // Its incarnation stops on its own; ledger 3's runs on.
    eventually("the released incarnation stops", LIMIT, || async {
        node.ledgers
            .supervisor()
            .count_children()
            .await
            .unwrap()
            .active
            == 1
    })
    .await;

    // The next message activates it afresh from the store: what it had stored, without the
    // dead-lettered adds.
    let back = get(&node.ledgers, 2).await;
    assert_eq!(back.amounts, amounts(1..6));
    assert_eq!(back.woke, "recovery");
    node.tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_off_entity_handles_what_came_first_writes_it_through_and_sends_the_rest_on() {
    let store: Store = Arc::new(MemoryStore::new());
    let first = node(Durability::write_behind(store.clone())).await;
    // The key is this node's until the hand-off takes it: afterwards a send is refused, not
    // activated here again.
    let handing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let owned = handing.clone();
    first
        .ledgers
        .fence_by(move |_| (!owned.load(Ordering::SeqCst)).then_some(7));
    let departed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let told = departed.clone();
    first
        .ledgers
        .on_departure(move |key, departure| told.lock().unwrap().push((*key, departure)));
    // (Amounts above the ledger's unlucky 13 and below its cursed 666.)
    for amount in 100..150 {
        first.ledgers.send(&2, Msg::Add(amount)).ok().unwrap();
    }
    // The entity is held busy (its mailbox empties as it reaches the hold); the hand-off
    // queues, and more adds behind it.
    let hold = Arc::new(tokio::sync::Notify::new());
    first
        .ledgers
        .send(&2, Msg::Hold(hold.clone()))
        .ok()
        .unwrap();
    eventually("the entity reaches the hold", LIMIT, || async {
        first.ledgers.mailbox_depth(&2) == 0
    })
    .await;
    let forwarded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = forwarded.clone();
    handing.store(true, Ordering::SeqCst);
    let handing_off = first.ledgers.clone();
    let handed = tokio::spawn(async move {
        handing_off
            .hand_off(
                |key| *key == 2,
                move |key, message| match message {
                    Msg::Add(amount) => {
                        sink.lock().unwrap().push((*key, amount));
                        Ok(())
                    }
                    Msg::Get(_) | Msg::End | Msg::Hold(_) => Err("not portable".into()),
                },
                LIMIT,
            )
            .await
    });
    eventually("the hand-off queues", LIMIT, || async {
        first.ledgers.mailbox_depth(&2) == 1
    })
    .await;
    let mut accepted = (100..150).collect::<Vec<u32>>();
    for amount in 150..200 {
        first.ledgers.send(&2, Msg::Add(amount)).ok().unwrap();
        accepted.push(amount);
    }
    hold.notify_one();
    let report = handed.await.unwrap();
    // Once it left, a send for it is refused (the key is not this node's), not activated.
    assert!(first.ledgers.send(&2, Msg::Add(999)).is_err());
    assert_eq!(report.handed_off, 1, "{report:?}");
    assert_eq!(report.unconfirmed, 0, "{report:?}");
    assert_eq!(
        report.forwarded, 50,
        "the adds behind the hand-off: {report:?}"
    );
    assert_eq!(
        forwarded
            .lock()
            .unwrap()
            .iter()
            .map(|(_, amount)| *amount)
            .collect::<Vec<_>>(),
        (150..200).collect::<Vec<_>>()
    );
    assert!(!first.ledgers.is_active(&2));
    assert_eq!(first.ledgers.dead_letters().len(), 0);
    let departures = departed.lock().unwrap().clone();
    assert_eq!(departures.len(), 1, "{departures:?}");
    assert_eq!(
        (
            departures[0].0,
            departures[0].1.kind,
            departures[0].1.generation
        ),
        (2, garrison_runtime::DepartureKind::HandedOff, Some(7))
    );

    // The new owner reads what the old one handled, then takes what was sent on: every
    // accepted add exactly once, in the order it was sent.
    let second = node(Durability::write_behind(store.clone())).await;
    for (key, amount) in forwarded.lock().unwrap().iter() {
        second.ledgers.send(key, Msg::Add(*amount)).ok().unwrap();
    }
    assert_eq!(get(&second.ledgers, 2).await.amounts, accepted);
    first.tree.stop().await.unwrap();
    second.tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_drop_oldest_mailbox_evicts_messages_never_the_hand_off() {
    let store: Store = Arc::new(MemoryStore::new());
    let node = node_with(
        Durability::write_behind(store.clone()),
        KindConfig {
            mailbox_capacity: 4,
            overflow: garrison_supervisor::Overflow::DropOldest,
            ..ledger_config()
        },
    )
    .await;
    node.ledgers.send(&5, Msg::Add(100)).ok().unwrap();
    let hold = Arc::new(tokio::sync::Notify::new());
    node.ledgers.send(&5, Msg::Hold(hold.clone())).ok().unwrap();
    eventually("the entity reaches the hold", LIMIT, || async {
        node.ledgers.mailbox_depth(&5) == 0
    })
    .await;
    let forwarded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = forwarded.clone();
    let handing_off = node.ledgers.clone();
    let handed = tokio::spawn(async move {
        handing_off
            .hand_off(
                |key| *key == 5,
                move |_, message| match message {
                    Msg::Add(amount) => {
                        sink.lock().unwrap().push(amount);
                        Ok(())
                    }
                    Msg::Get(_) | Msg::End | Msg::Hold(_) => Err("not portable".into()),
                },
                LIMIT,
            )
            .await
    });
    eventually("the hand-off queues", LIMIT, || async {
        node.ledgers.mailbox_depth(&5) == 1
    })
    .await;
    // Twenty adds into a mailbox of four: the hand-off reaches the front and would be the
    // oldest evicted; it is queued again instead, and the adds before it are dead-lettered.
    for amount in 200..220 {
        node.ledgers.send(&5, Msg::Add(amount)).ok().unwrap();
    }
    hold.notify_one();
    let report = handed.await.unwrap();
    assert_eq!(report.handed_off, 1, "{report:?}");
    assert_eq!(report.unconfirmed, 0, "{report:?}");
    let letters = node.ledgers.dead_letters().snapshot();
    assert!(
        letters
            .iter()
            .all(|letter| letter.reason.contains("DropOldest")),
        "{letters:?}"
    );
    let letters = letters.len();
    // Every add is handled (its state handed over through the store), sent on, or
    // dead-lettered with the eviction's reason.
    let reader = node_with(Durability::write_behind(store.clone()), ledger_config()).await;
    let handled = get(&reader.ledgers, 5).await.amounts;
    reader.tree.stop().await.unwrap();
    let sent_on = forwarded.lock().unwrap().len();
    assert_eq!(
        handled.len() - 1 + sent_on + letters,
        20,
        "handled {handled:?}, sent on {sent_on}, dead-lettered {letters}"
    );
    assert!(letters >= 16, "the mailbox held four: {letters} evicted");
    node.tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_lease_an_entity_handles_nothing_its_message_is_dead_lettered_and_it_is_forgotten()
{
    let store: Store = Arc::new(MemoryStore::new());
    let node = node(Durability::write_behind(store.clone())).await;
    let lease = garrison_runtime::Lease::new();
    node.ledgers.lease(lease.clone());
    let departed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let told = departed.clone();
    node.ledgers
        .on_departure(move |key, departure| told.lock().unwrap().push((*key, departure.kind)));
    lease.renew_until(std::time::Instant::now() + Duration::from_secs(60));
    node.ledgers.send(&4, Msg::Add(1)).ok().unwrap();
    assert_eq!(get(&node.ledgers, 4).await.amounts, vec![1]);

    // The lease lapses (as in a process paused past it): the next message is not handled.
    lease.revoke();
    node.ledgers.send(&4, Msg::Add(2)).ok().unwrap();
    eventually("the entity lapses", LIMIT, || async {
        !node.ledgers.is_active(&4)
    })
    .await;
    let letters = node.ledgers.dead_letters().snapshot();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].reason.contains("lease"), "{letters:?}");
    assert_eq!(
        departed.lock().unwrap().clone(),
        vec![(4, garrison_runtime::DepartureKind::Lapsed)]
    );
    assert!(node.ledgers.flush(LIMIT).await);
    // Renewed, it runs again from what it had written: the add it never handled is not there.
    lease.renew_until(std::time::Instant::now() + Duration::from_secs(60));
    assert_eq!(get(&node.ledgers, 4).await.amounts, vec![1]);
    node.tree.stop().await.unwrap();
}

// One thread: the activation is created while the lease holds and starts only after it
// lapsed (as in a process paused between the two).
#[tokio::test]
async fn an_activation_that_starts_past_its_lease_runs_nothing_not_even_its_activate() {
    let store: Store = Arc::new(MemoryStore::new());
    let node = node(Durability::write_behind(store.clone())).await;
    let lease = garrison_runtime::Lease::new();
    node.ledgers.lease(lease.clone());
    let departed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let told = departed.clone();
    node.ledgers
        .on_departure(move |key, departure| told.lock().unwrap().push((*key, departure.kind)));
    lease.renew_until(std::time::Instant::now() + Duration::from_secs(60));
    node.ledgers.send(&6, Msg::Add(1)).ok().unwrap();
    lease.revoke();
    eventually("the activation lapses", LIMIT, || async {
        !departed.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        departed.lock().unwrap().clone(),
        vec![(6, garrison_runtime::DepartureKind::Lapsed)]
    );
    assert!(!node.ledgers.is_active(&6));
    assert_eq!(node.started.load(Ordering::Relaxed), 0, "`started` ran");
    let letters = node.ledgers.dead_letters().snapshot();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].reason.contains("lease"), "{letters:?}");
    assert!(node.ledgers.flush(LIMIT).await);
    // Renewed, its next message activates it fresh: the add it never handled is not there.
    lease.renew_until(std::time::Instant::now() + Duration::from_secs(60));
    let ledger = get(&node.ledgers, 6).await;
    assert_eq!((ledger.amounts, ledger.woke.as_str()), (vec![], "fresh"));
    node.tree.stop().await.unwrap();
}

/// A Redis server of the test's own, on a free loopback port, stopped by its pid.
struct OwnRedis {
    child: std::process::Child,
    dir: Option<TempDir>,
}

impl OwnRedis {
    fn binary() -> Option<String> {
        let binary =
            std::env::var("GARRISON_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let found = std::process::Command::new(&binary)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success());
        if found {
            return Some(binary);
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs redis-server for the outage test (.ci/run)"
        );
        eprintln!("skipped: redis-server not found (set GARRISON_REDIS_SERVER)");
        None
    }

    async fn start(binary: &str, port: u16, dir: TempDir) -> Self {
        // Persistence on, as a production Redis has it: what was written before the outage is
        // there after it.
        let child = std::process::Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let redis = OwnRedis {
            child,
            dir: Some(dir),
        };
        eventually("redis answering", LIMIT, || async move {
            RedisStore::connect(&format!("redis://127.0.0.1:{port}"), "probe")
                .await
                .is_ok()
        })
        .await;
        redis
    }

    /// A Redis of its own on a free loopback port, and a store on it under `namespace`.
    async fn fresh(binary: &str, label: &str, namespace: &str) -> (Self, u16, Store) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .unwrap();
        let redis = OwnRedis::start(binary, port, TempDir::new(label)).await;
        let store: Store = Arc::new(
            RedisStore::connect(&format!("redis://127.0.0.1:{port}"), namespace)
                .await
                .unwrap(),
        );
        (redis, port, store)
    }

    /// Kills it (SIGKILL, by its pid), keeping its data directory.
    fn kill(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take().expect("the directory")
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_degrades_durability_and_it_catches_up_when_redis_is_back() {
    let Some(binary) = OwnRedis::binary() else {
        return;
    };
    let (redis, port, store) = OwnRedis::fresh(&binary, "redis-outage", "outage").await;
    let node = node(Durability::write_behind(store.clone())).await;
    const LEDGERS: u64 = 20;
    for key in 0..LEDGERS {
        node.ledgers.send(&key, Msg::Add(1)).ok().unwrap();
        get(&node.ledgers, key).await;
    }
    assert!(node.ledgers.flush(LIMIT).await);

    // Redis goes away for five seconds of traffic: every ledger keeps answering.
    let dir = redis.kill();
    let outage = std::time::Instant::now();
    let mut sent = 0u64;
    while outage.elapsed() < Duration::from_secs(5) {
        let key = sent % LEDGERS;
        node.ledgers.send(&key, Msg::Add(2)).ok().unwrap();
        get(&node.ledgers, key).await;
        sent += 1;
        let stats = node.ledgers.durability().unwrap();
        assert!(
            stats.pending <= LEDGERS,
            "one pending entry per entity at most: {stats:?}"
        );
    }
    let during = node.ledgers.durability().unwrap();
    assert!(
        during.degraded && during.errors > 0,
        "the outage is visible: {during:?}"
    );
    assert!(
        sent > LEDGERS * 5,
        "entities kept handling ({sent} messages)"
    );

    // Back on the same port with its data: the newest state of every ledger is written.
    let _redis = OwnRedis::start(&binary, port, dir).await;
    eventually("durability caught up", Duration::from_secs(20), || {
        let stats = node.ledgers.durability().unwrap();
        async move { !stats.degraded && stats.pending == 0 }
    })
    .await;
    for key in 0..LEDGERS {
        let live = get(&node.ledgers, key).await.amounts;
        let stored = store
            .get("ledger", &key.to_string())
            .await
            .unwrap()
            .unwrap();
        let log = store
            .read_log("ledger", &key.to_string(), stored.log_from)
            .await
            .unwrap();
        let snapshot: Ledger = garrison_protocol::snapshot::read(stored.snapshot).unwrap();
        assert_eq!(log.damaged, None);
        assert_eq!(
            snapshot.amounts.len() + log.entries.len(),
            live.len(),
            "ledger {key}: the store has the newest state"
        );
    }
    node.tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_state_its_module_refuses_is_set_aside_and_the_next_activation_is_fresh() {
    let store = Arc::new(MemoryStore::new());
    let unlucky = garrison_protocol::snapshot::write(&Ledger {
        amounts: vec![13],
        woke: String::new(),
    })
    .unwrap();
    store
        .write(&[Write::Put {
            kind: "ledger".into(),
            key: "5".into(),
            generation: 0,
            log_from: 0,
            snapshot: unlucky,
        }])
        .await
        .unwrap();
    let node = node(Durability::write_behind(store.clone())).await;
    // The first activation fails on the stored state: the request is dead-lettered.
    let first = node.ledgers.call(&5, Msg::Get, LIMIT).await;
    assert!(first.is_err(), "{first:?}");
    // The record went aside, so the next one does not fail the same way.
    assert_eq!(get(&node.ledgers, 5).await.woke, "fresh");
    let aside = store.set_aside_records("ledger").await.unwrap();
    assert_eq!(aside.len(), 1);
    assert!(aside[0].reason.contains("an unlucky ledger"), "{aside:?}");
    node.tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_behind_set_drops_changes_until_a_flush_or_an_end_queues_them() {
    let store: Store = Arc::new(MemoryStore::new());
    // One entity waiting at most, and a lag long enough that nothing is written unasked.
    let durability = Durability::WriteBehind {
        store: store.clone(),
        max_lag: Duration::from_secs(120),
    };
    let config = KindConfig {
        max_pending_writes: 1,
        ..ledger_config()
    };
    let node = node_with(durability, config).await;
    for key in 1..=3 {
        node.ledgers.send(&key, Msg::Add(7)).ok().unwrap();
        get(&node.ledgers, key).await;
    }
    let stats = node.ledgers.durability().unwrap();
    assert_eq!((stats.pending, stats.dropped), (1, 2), "{stats:?}");
    // An end is an activation's last change: queued however full the set is.
    node.ledgers.send(&4, Msg::Add(1)).ok().unwrap();
    node.ledgers.send(&4, Msg::End).ok().unwrap();
    eventually("ledger 4 ended", LIMIT, || {
        let ended = !node.ledgers.is_active(&4);
        async move { ended }
    })
    .await;
    assert_eq!(node.ledgers.durability().unwrap().pending, 2);
    // A flush queues what the full set did not take, and writes it all.
    assert!(node.ledgers.flush(LIMIT).await);
    let mut keys = store.list("ledger").await.unwrap();
    keys.sort();
    assert_eq!(
        keys,
        ["1", "2", "3"],
        "every change is stored, and the ended ledger is gone"
    );
    node.tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn battle_rooms_play_through_a_redis_outage_and_their_state_catches_up() {
    use garrison_battle::{
        bots::{BotOptions, play},
        run::{local_server, match_frames},
        server::BattleServer,
    };
    let Some(binary) = OwnRedis::binary() else {
        return;
    };
    let (redis, port, store) = OwnRedis::fresh(&binary, "battle-outage", "battle-outage").await;
    const KEY: &str = "outage key";
    let mut config = local_server(8, KEY).unwrap();
    config.match_frames = match_frames(600);
    config.store = Some(store.clone());
    let server = BattleServer::start(config).await.unwrap();
    let address = server.gateway.tcp_addr().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(14);
    let bots: Vec<_> = (1..=16)
        .map(|player| {
            tokio::spawn(play(
                address,
                KEY.as_bytes().to_vec(),
                player,
                deadline,
                BotOptions::default(),
            ))
        })
        .collect();
    let frames = || {
        server
            .stats
            .frames
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    eventually("both rooms playing", LIMIT, || {
        let playing = frames() >= 120;
        async move { playing }
    })
    .await;

    // Redis goes away for five seconds of play (600 frames of two rooms at 60 Hz).
    let dir = redis.kill();
    let before = frames();
    eventually(
        "five seconds of frames without Redis",
        Duration::from_secs(30),
        || {
            let played = frames() >= before + 600;
            async move { played }
        },
    )
    .await;
    let during = server.room_durability().unwrap();
    assert!(
        during.degraded && during.errors > 0,
        "the outage is visible: {during:?}"
    );
    assert!(
        during.pending <= 2,
        "one pending entry per room at most: {during:?}"
    );

    let _redis = OwnRedis::start(&binary, port, dir).await;
    eventually(
        "the rooms' state written again",
        Duration::from_secs(20),
        || {
            let stats = server.room_durability().unwrap();
            async move { !stats.degraded && stats.pending == 0 && stats.batches > during.batches }
        },
    )
    .await;
    for bot in bots {
        let report = bot
            .await
            .unwrap()
            .expect("every bot played through the outage");
        assert_eq!((report.desyncs, report.mismatched), (0, 0), "{report:?}");
        assert!(report.frames > 600, "{report:?}");
    }
    let mut rooms = store.list("room").await.unwrap();
    rooms.sort();
    assert_eq!(
        rooms.len(),
        2,
        "both rooms are in the store again: {rooms:?}"
    );
    server.stop().await;
}
