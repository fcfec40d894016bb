//! A node's [`Kinds`] as its table changes, in one process and with no peer: the node's side
//! of a hand-off, driven through its [`Inbox`] the way its node and its fleet member drive it.
//!
//! - a shard the table gives the node waits for the hand-off of the node that had it, keeping
//!   what comes for it; handed over, the kept messages reach the entity first and in order;
//! - while the fleet's members are unknown, an old owner counts as standing (the shard waits);
//!   once known to be gone, its shards run at once;
//! - a shard lost again before its hand-off came is told on, not run: the node waits on the
//!   same old owner for the newer one, and what it kept goes on by the node's routing.
#![cfg(feature = "nodes")]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use garrison_cluster::fleet::Kinds;
use garrison_cluster::node::Inbox;
use garrison_cluster::{Table, shard_of};
use garrison_protocol::{FrameMeta, Schema, Validated, encode_frame, messages, snapshot::Snapshot};
use garrison_runtime::prelude::{SupervisorRef, supervisor};
use garrison_runtime::{Entities, Entity, EntityContext, EntityMessage, HandlerError, KindConfig};
use rkyv::{Archive, Deserialize, Serialize};

const SHARDS: u16 = 64;

/// A number for an entity to note.
#[derive(Archive, Serialize, Deserialize, Schema, Debug)]
pub struct Note {
    /// The number.
    pub n: u32,
}

messages! {
    /// What the test's kind takes.
    pub enum KindsTestMessage {
        0x0f31 => Note(Note),
    }
}

struct Noted(Validated<Note>);

impl EntityMessage for Noted {
    fn event_type(&self) -> &'static str {
        "note"
    }
}

/// The entity's state: nothing it needs (what it handled is in the shared list).
#[derive(Archive, Serialize, Deserialize, Default)]
struct Nothing;

impl Snapshot for Nothing {
    const SCHEMA: &'static str = "kinds-test.nothing";
    const VERSION: u16 = 1;
}

/// Notes every number it handles, with its key, in one shared list.
struct Noter(Arc<Mutex<Vec<(u32, u32)>>>);

impl Entity for Noter {
    const KIND: &'static str = "noter";
    type Key = u32;
    type State = Nothing;
    type Message = Noted;

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        Noted(note): Noted,
        _: &mut Nothing,
    ) -> Result<(), HandlerError> {
        self.0
            .lock()
            .unwrap()
            .push((*context.key(), note.n.to_native()));
        Ok(())
    }
}

struct Setup {
    kinds: Kinds,
    noted: Arc<Mutex<Vec<(u32, u32)>>>,
    tree: SupervisorRef,
}

async fn setup() -> Setup {
    let noted = Arc::new(Mutex::new(Vec::new()));
    let kinds = Kinds::new();
    let noters = Entities::<Noter>::declare(KindConfig::default()).expect("the kind");
    kinds.serve(noters.clone(), Noted);
    noters.serve(Noter(noted.clone())).expect("served");
    let tree = supervisor! {
        "kinds-test": one_for_one {
            entities "noters" => noters.start();
        }
    }
    .expect("the tree")
    .start()
    .await
    .expect("the tree starts");
    Setup { kinds, noted, tree }
}

fn nodes(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|id| (*id).to_owned()).collect()
}

fn members(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| (*id).to_owned()).collect()
}

fn shard(key: u32) -> u16 {
    shard_of(Noter::KIND, key.to_string().as_bytes(), SHARDS).0
}

/// The first keys whose shards `node` owns in `table` and not in `before`, each on a shard of
/// its own.
fn gained_keys(before: &Table, table: &Table, node: &str, count: usize) -> Vec<u32> {
    let mut shards = BTreeSet::new();
    (0..)
        .filter(|key| {
            let shard = shard(*key);
            let owner = |table: &Table| table.shards[usize::from(shard)].node.clone();
            owner(table).as_deref() == Some(node)
                && owner(before).as_deref() != Some(node)
                && shards.insert(shard)
        })
        .take(count)
        .collect()
}

fn note(kinds: &Kinds, key: u32, n: u32) {
    let frame = encode_frame(
        &Note { n },
        FrameMeta {
            seq: 0,
            trace: None,
            reply: false,
        },
    )
    .expect("encodes");
    Inbox::deliver(
        kinds,
        Noter::KIND,
        key.to_string().as_bytes(),
        frame.wire(),
        None,
    )
    .expect("taken");
}

/// Polls `condition` every 5 ms until it holds; panics naming `what` after 10 s.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gained_shard_waits_for_its_hand_off_then_runs_what_it_kept_first_and_in_order() {
    let Setup { kinds, noted, tree } = setup().await;
    kinds.members_changed(members(&["a", "b"]));
    let (alone, _) = Table::empty(SHARDS).rebalance(&nodes(&["a"]));
    kinds.table_changed("b", &alone);
    let (shared, _) = alone.rebalance(&nodes(&["a", "b"]));
    kinds.table_changed("b", &shared);
    assert_eq!(kinds.stats().incoming, usize::from(SHARDS) / 2);

    let key = gained_keys(&alone, &shared, "b", 1)[0];
    for n in 1..=3 {
        note(&kinds, key, n);
    }
    assert_eq!(kinds.stats().buffered, 3);
    // A hand-off from a node the shard does not wait on changes nothing.
    kinds.handed_off("c", shared.version, &[shard(key)]);
    assert_eq!(kinds.stats().incoming, usize::from(SHARDS) / 2);
    assert!(
        noted.lock().unwrap().is_empty(),
        "nothing runs before the hand-off"
    );

    kinds.handed_off("a", shared.version, &[shard(key)]);
    note(&kinds, key, 4);
    until("the kept messages, then the new one", || {
        noted.lock().unwrap().len() == 4
    })
    .await;
    assert_eq!(
        *noted.lock().unwrap(),
        vec![(key, 1), (key, 2), (key, 3), (key, 4)]
    );
    let stats = kinds.stats();
    assert_eq!(
        (stats.incoming, stats.arrivals, stats.buffered),
        (usize::from(SHARDS) / 2 - 1, 1, 3),
        "{stats:?}"
    );
    tree.stop().await.expect("the tree stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_owner_counts_as_standing_until_the_fleet_is_known_to_have_lost_it() {
    let Setup { kinds, noted, tree } = setup().await;
    // A process just started: its first table, and no word yet on the fleet's members.
    let (alone, _) = Table::empty(SHARDS).rebalance(&nodes(&["a"]));
    let (shared, _) = alone.rebalance(&nodes(&["a", "b"]));
    kinds.table_changed("b", &shared);
    assert_eq!(kinds.stats().incoming, usize::from(SHARDS) / 2);
    assert_eq!(kinds.stats().arrivals, 0, "nothing runs from the store yet");
    let key = gained_keys(&alone, &shared, "b", 1)[0];
    note(&kinds, key, 7);

    // The members are read: a is gone, so nobody will hand its shards over.
    kinds.members_changed(members(&["b"]));
    until("the kept message runs", || noted.lock().unwrap().len() == 1).await;
    assert_eq!(*noted.lock().unwrap(), vec![(key, 7)]);
    let stats = kinds.stats();
    assert_eq!(
        (stats.incoming, stats.arrivals),
        (0, u64::from(SHARDS) / 2),
        "{stats:?}"
    );
    tree.stop().await.expect("the tree stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_lost_before_its_hand_off_is_told_on_not_run() {
    let Setup { kinds, noted, tree } = setup().await;
    kinds.set_member(true);
    kinds.members_changed(members(&["a", "b", "c"]));
    let (alone, _) = Table::empty(SHARDS).rebalance(&nodes(&["a"]));
    kinds.table_changed("b", &alone);
    let (shared, _) = alone.rebalance(&nodes(&["a", "b"]));
    kinds.table_changed("b", &shared);
    let keys = gained_keys(&alone, &shared, "b", 2);
    // One of b's new shards is handed over and runs; the other still waits, with two kept.
    kinds.handed_off("a", shared.version, &[shard(keys[0])]);
    note(&kinds, keys[0], 1);
    note(&kinds, keys[1], 2);
    note(&kinds, keys[1], 3);
    until("the handed-over shard runs", || {
        noted.lock().unwrap().len() == 1
    })
    .await;

    // b drains: every shard it has goes to c, which waits on b. The one that ran here is
    // handed off (released here: no node is attached to hand it through); the ones that never
    // ran are told on once a hands them over, and what b kept goes on by the node's routing
    // (counted as undeliverable here, with no node to route through).
    let (moved, _) = shared.rebalance(&nodes(&["a", "c"]));
    assert!(
        moved
            .shards
            .iter()
            .filter(|assignment| assignment.node.as_deref() == Some("c"))
            .all(|assignment| assignment.from.is_some())
    );
    kinds.table_changed("b", &moved);
    let stats = kinds.stats();
    let waited = usize::from(SHARDS) / 2 - 1;
    assert_eq!(
        (stats.incoming, stats.forwarding, stats.undeliverable),
        (0, waited, 2),
        "{stats:?}"
    );
    assert_eq!(stats.released, 1, "the entity that ran here: {stats:?}");
    // a's hand-off of one of them reaches b (a saw the table that gave it to b): told on, and
    // not run here.
    kinds.handed_off("a", shared.version, &[shard(keys[1])]);
    assert_eq!(kinds.stats().forwarding, waited - 1);
    // a leaves the fleet: nobody will hand over the rest, so they are told on at once.
    kinds.members_changed(members(&["b", "c"]));
    let stats = kinds.stats();
    assert_eq!((stats.forwarding, stats.arrivals), (0, 1), "{stats:?}");
    assert_eq!(
        *noted.lock().unwrap(),
        vec![(keys[0], 1)],
        "nothing else ran here"
    );
    tree.stop().await.expect("the tree stops");
}
