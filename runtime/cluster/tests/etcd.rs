//! The control plane against a real etcd (`GARRISON_ETCD_ENDPOINT`, which `.ci/run` sets after
//! starting one on 127.0.0.1; without it these tests say so and pass, except on CI): nodes join
//! and share the 1,024 shards evenly with one coordinator; a killed coordinator's shards move to
//! the survivors once its lease expires, with new fencing tokens, and a survivor takes over the
//! election; a node that leaves hands its shards over at once; a node whose lease is gone owns
//! nothing; a duplicate node is refused; a malformed table record is ignored by the followers
//! and rebuilt by the coordinator with tokens above every old one. With `nodes`, a node on
//! ractor_cluster follows the fleet's table: it routes by it, its entities write with their
//! shards' tokens, the entities of shards it loses are released (an activation of a key it does
//! not own is fenced), and it delivers nothing once its lease is gone.
#![cfg(feature = "etcd")]

use std::{
    collections::BTreeMap,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use garrison_cluster::{
    Table,
    etcd::{Fleet, FleetConfig, FleetError, NodeInfo, Standing},
};

fn endpoint() -> Option<String> {
    match std::env::var("GARRISON_ETCD_ENDPOINT") {
        Ok(endpoint) => Some(endpoint),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs this test against a real etcd: .ci/run sets GARRISON_ETCD_ENDPOINT"
            );
            eprintln!("skipped: set GARRISON_ETCD_ENDPOINT=http://127.0.0.1:PORT (see README)");
            None
        }
    }
}

/// A fleet name no other test (or earlier run) uses.
fn namespace(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("test-{test}-{}-{nanos}", std::process::id())
}

async fn node(endpoint: &str, namespace: &str, id: &str) -> Fleet {
    let info = NodeInfo {
        id: id.into(),
        address: format!("127.0.0.1:7{}", id.len()),
        version: "test".into(),
        peer: String::new(),
        draining: false,
    };
    Fleet::join(FleetConfig::new(vec![endpoint.into()], namespace, info))
        .await
        .unwrap()
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` after `limit`.
async fn until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn loads(table: &Table) -> BTreeMap<String, usize> {
    table
        .loads()
        .into_iter()
        .map(|(node, load)| (node.to_owned(), load))
        .collect()
}

/// Whether `table` gives every shard to exactly `ids`, balanced.
fn balanced_over(table: &Table, ids: &[&str]) -> bool {
    let loads = loads(table);
    let total: usize = loads.values().sum();
    let (min, max) = (
        loads.values().min().copied().unwrap_or(0),
        loads.values().max().copied().unwrap_or(0),
    );
    total == table.shards.len()
        && loads.len() == ids.len()
        && ids.iter().all(|id| loads.contains_key(*id))
        && max - min <= 1
}

fn all_see(fleet: &[&Fleet], ids: &[&str]) -> bool {
    let version = fleet[0].table().version;
    fleet
        .iter()
        .all(|node| node.table().version == version && balanced_over(&node.table(), ids))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_the_shards_and_a_killed_coordinator_s_move_to_the_survivors() {
    let Some(endpoint) = endpoint() else { return };
    let ns = namespace("kill");
    let a = node(&endpoint, &ns, "a").await;
    let b = node(&endpoint, &ns, "b").await;
    let c = node(&endpoint, &ns, "c").await;
    until(
        "three nodes share 1,024 shards",
        Duration::from_secs(10),
        || all_see(&[&a, &b, &c], &["a", "b", "c"]),
    )
    .await;
    let before = a.table();
    let mut shares: Vec<usize> = loads(&before).into_values().collect();
    shares.sort();
    assert_eq!(shares, vec![341, 341, 342]);
    let coordinators: Vec<&str> = [&a, &b, &c]
        .into_iter()
        .filter(|n| n.is_coordinator())
        .map(|n| n.id())
        .collect();
    assert_eq!(coordinators.len(), 1, "one coordinator: {coordinators:?}");
    // Kill the coordinator (its lease is not revoked: it expires after 3 s).
    let mut nodes = vec![a, b, c];
    let leader = nodes.iter().position(|n| n.is_coordinator()).unwrap();
    let killed = nodes.remove(leader);
    let killed_id = killed.id().to_owned();
    drop(killed);
    let survivors: Vec<&str> = nodes.iter().map(|n| n.id()).collect();
    let detected = until(
        "the survivors take the killed coordinator's shards",
        Duration::from_secs(10),
        || all_see(&[&nodes[0], &nodes[1]], &survivors),
    )
    .await;
    println!("killed coordinator {killed_id}: its shards reassigned {detected:?} after the kill");
    assert!(
        detected < Duration::from_secs(6),
        "within the 3 s lease and a rebalance: {detected:?}"
    );
    assert!(
        nodes.iter().filter(|n| n.is_coordinator()).count() == 1,
        "a survivor took over the election"
    );
    let after = nodes[0].table();
    assert!(after.version > before.version);
    for (old, new) in before.shards.iter().zip(&after.shards) {
        if old.node.as_deref() == Some(killed_id.as_str()) {
            assert!(new.token > old.token, "a moved shard carries a newer token");
        } else {
            assert_eq!(old, new, "a survivor's shard stayed where it was");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_hands_its_shards_over_at_once_and_a_newcomer_gets_its_share() {
    let Some(endpoint) = endpoint() else { return };
    let ns = namespace("leave");
    let a = node(&endpoint, &ns, "a").await;
    let b = node(&endpoint, &ns, "b").await;
    until("two nodes", Duration::from_secs(10), || {
        all_see(&[&a, &b], &["a", "b"])
    })
    .await;
    let c = node(&endpoint, &ns, "c").await;
    until("the newcomer's share", Duration::from_secs(10), || {
        all_see(&[&a, &b, &c], &["a", "b", "c"])
    })
    .await;
    assert_eq!(c.owned().len(), 1024 / 3);
    let (b_id, before) = (b.id().to_owned(), a.table());
    let left = Instant::now();
    b.leave().await.unwrap();
    let moved = until(
        "b's shards move on its leave",
        Duration::from_secs(3),
        || all_see(&[&a, &c], &["a", "c"]),
    )
    .await;
    println!(
        "a node that left: its shards reassigned {moved:?} after, {:?} since the call",
        left.elapsed()
    );
    assert!(moved < Duration::from_secs(2), "no lease to wait for");
    let after = a.table();
    let moved_shards = before
        .shards
        .iter()
        .filter(|s| s.node.as_deref() == Some(b_id.as_str()))
        .count();
    let changed = before
        .shards
        .iter()
        .zip(&after.shards)
        .filter(|(old, new)| old.node != new.node)
        .count();
    assert_eq!(changed, moved_shards, "only the leaver's shards moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_is_gone_owns_nothing_and_a_duplicate_is_refused() {
    let Some(endpoint) = endpoint() else { return };
    let ns = namespace("lease");
    let a = node(&endpoint, &ns, "a").await;
    let b = node(&endpoint, &ns, "b").await;
    until("two nodes", Duration::from_secs(10), || {
        all_see(&[&a, &b], &["a", "b"])
    })
    .await;
    // A second node with a live id is refused (after waiting a moment for it to go).
    let info = |id: &str| NodeInfo {
        id: id.into(),
        address: "127.0.0.1:1".into(),
        version: "test".into(),
        peer: String::new(),
        draining: false,
    };
    let duplicate = Fleet::join(FleetConfig {
        join_wait: Duration::from_millis(300),
        ..FleetConfig::new(vec![endpoint.clone()], &ns, info("a"))
    })
    .await;
    assert!(matches!(duplicate, Err(FleetError::DuplicateNode(id)) if id == "a"));
    // A node killed and started again takes its id back once its old lease expires.
    let c = node(&endpoint, &ns, "c").await;
    drop(c);
    let restarted = Instant::now();
    let c = Fleet::join(FleetConfig::new(vec![endpoint.clone()], &ns, info("c")))
        .await
        .expect("the restarted node joins once the old lease is gone");
    assert!(restarted.elapsed() < Duration::from_secs(6));
    c.leave().await.unwrap();
    assert!(!b.owned().is_empty());
    // b's lease goes (as if it had expired while b was paused): b finds out and owns nothing,
    // and a takes every shard.
    let mut outside = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .unwrap();
    outside.lease_revoke(b.lease()).await.unwrap();
    until("b learns its lease is gone", Duration::from_secs(5), || {
        b.standing() == Standing::LeaseLost
    })
    .await;
    assert!(b.owned().is_empty(), "no shard without a lease");
    until("a holds every shard", Duration::from_secs(5), || {
        balanced_over(&a.table(), &["a"])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_table_is_ignored_by_followers_and_rebuilt_with_newer_tokens() {
    let Some(endpoint) = endpoint() else { return };
    let ns = namespace("malformed");
    let a = node(&endpoint, &ns, "a").await;
    let b = node(&endpoint, &ns, "b").await;
    until("two nodes", Duration::from_secs(10), || {
        all_see(&[&a, &b], &["a", "b"])
    })
    .await;
    let good = a.table();
    let mut outside = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .unwrap();
    outside
        .put(
            format!("garrison/{ns}/table"),
            "{\"version\": 99, \"owners\": [",
            None,
        )
        .await
        .unwrap();
    until(
        "both count the damaged record",
        Duration::from_secs(5),
        || {
            [&a, &b]
                .iter()
                .all(|n| n.stats().malformed_tables.load(Ordering::Relaxed) >= 1)
        },
    )
    .await;
    assert_eq!(*a.table(), *good, "the last good table stays");
    assert_eq!(b.owned().len(), good.owned_by("b").count());
    // The next change (a third node) makes the coordinator rebuild the table from scratch,
    // stamping every shard above every token the damaged table's predecessors gave.
    let c = node(&endpoint, &ns, "c").await;
    until("a rebuilt table", Duration::from_secs(10), || {
        all_see(&[&a, &b, &c], &["a", "b", "c"])
    })
    .await;
    let rebuilt = a.table();
    let newest_old = good.shards.iter().map(|s| s.token).max().unwrap();
    assert!(rebuilt.version > good.version);
    assert!(rebuilt.shards.iter().all(|s| s.token > newest_old));
}

/// A node on ractor_cluster acting on the fleet's table from etcd (`member::run`).
#[cfg(feature = "nodes")]
mod acting {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;
    use std::time::Duration;

    use garrison_cluster::fleet::{Kinds, Sharded};
    use garrison_cluster::member;
    use garrison_cluster::node::{Node, NodeConfig, Route, SendError};
    use garrison_cluster::{DEFAULT_SHARDS, Table, shard_of};
    use garrison_protocol::{Schema, Validated, messages, snapshot::Snapshot};
    use garrison_runtime::prelude::supervisor;
    use garrison_runtime::store::{MemoryStore, Outcome, Store, Write};
    use garrison_runtime::{
        Durability, Entities, Entity, EntityContext, EntityMessage, HandlerError, KindConfig,
    };
    use rkyv::{Archive, Deserialize, Serialize};

    use super::{Standing, balanced_over, endpoint, namespace, node as member, until};

    /// Add `by` to a counter.
    #[derive(Archive, Serialize, Deserialize, Schema, Debug)]
    pub struct Bump {
        /// How much.
        pub by: u32,
    }

    messages! {
        /// What the counters take from the fleet.
        pub enum ActingMessage {
            0x0f11 => Bump(Bump),
        }
    }

    #[derive(Archive, Serialize, Deserialize, Default)]
    struct Count {
        count: u64,
    }

    impl Snapshot for Count {
        const SCHEMA: &'static str = "acting-test.count";
        const VERSION: u16 = 1;
    }

    struct CounterMsg(Validated<Bump>);

    impl EntityMessage for CounterMsg {
        fn event_type(&self) -> &'static str {
            "bump"
        }
    }

    struct Counter;

    impl Entity for Counter {
        const KIND: &'static str = "counter";
        type Key = u32;
        type State = Count;
        type Message = CounterMsg;

        async fn handle(
            &self,
            _context: &mut EntityContext<'_, Self>,
            CounterMsg(bump): CounterMsg,
            state: &mut Count,
        ) -> Result<(), HandlerError> {
            state.count += u64::from(bump.by.to_native());
            Ok(())
        }
    }

    fn owner_of(table: &Table, key: u32) -> Option<(String, u64)> {
        table
            .owner(shard_of(
                "counter",
                key.to_string().as_bytes(),
                DEFAULT_SHARDS,
            ))
            .map(|(node, token)| (node.to_owned(), token))
    }

    async fn stored(store: &Store, key: u32) -> Option<(u64, u64)> {
        let record = store.get("counter", &key.to_string()).await.unwrap()?;
        let generation = record.generation;
        let count: Count = garrison_protocol::snapshot::read(record.snapshot).unwrap();
        Some((generation, count.count))
    }

    /// Polls the store until `key`'s record reads `want` (generation, count).
    async fn until_stored(store: &Store, key: u32, want: (u64, u64)) {
        let start = std::time::Instant::now();
        loop {
            let got = stored(store, key).await;
            if got == Some(want) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "counter {key}: stored {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_acts_on_the_fleets_table_and_lets_go_of_the_shards_it_loses() {
        let Some(endpoint) = endpoint() else { return };
        let ns = namespace("acting");
        let store: Store = Arc::new(MemoryStore::new());
        let kinds = Kinds::new();
        let counters = Entities::<Counter>::declare(KindConfig {
            durability: Durability::write_behind(store.clone()),
            ..KindConfig::default()
        })
        .unwrap();
        kinds.serve(counters.clone(), CounterMsg);
        let config = NodeConfig {
            id: "a".into(),
            cookie: "garrison-acting-test".into(),
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            shards: DEFAULT_SHARDS,
        };
        let node = Arc::new(
            Node::start(config, Table::empty(DEFAULT_SHARDS), kinds.clone())
                .await
                .unwrap(),
        );
        counters.serve(Counter).unwrap();
        let tree = supervisor! {
            "acting-test": one_for_one {
                entities "counters" => counters.start();
            }
        }
        .unwrap()
        .start()
        .await
        .unwrap();
        let sharded = Sharded::<Counter, Bump>::new(node.clone());

        // Alone in the fleet, the node routes every key to its own entities, and each writes
        // with the token of its shard.
        let a = member(&endpoint, &ns, "a").await;
        let following = member::run(&a, node.clone(), kinds.clone());
        until(
            "the node acts on a table of its own",
            Duration::from_secs(10),
            || balanced_over(&node.table(), &["a"]),
        )
        .await;
        let first = node.table();
        for key in 0..64 {
            let route = sharded.send(&key, &Bump { by: 1 }, None).unwrap();
            assert_eq!(route, Route::Local);
        }
        for key in 0..64 {
            let (_, token) = owner_of(&first, key).unwrap();
            assert!(token > 0);
            until_stored(&store, key, (token, 1)).await;
        }

        // A second member joins: the node routes half the shards to it from the next table.
        let b = member(&endpoint, &ns, "b").await;
        until(
            "the node acts on the two-node table",
            Duration::from_secs(10),
            || balanced_over(&node.table(), &["a", "b"]),
        )
        .await;
        let second = node.table();
        assert!(second.version > first.version);
        let moved: Vec<u32> = (0..64)
            .filter(|key| owner_of(&second, *key).unwrap().0 == "b")
            .collect();
        let kept: Vec<u32> = (0..64)
            .filter(|key| owner_of(&second, *key).unwrap().0 == "a")
            .collect();
        assert!(!moved.is_empty() && !kept.is_empty(), "{moved:?} {kept:?}");
        // b has no node on ractor_cluster in this test: its keys are unreachable, not local.
        assert_eq!(
            sharded.send(&moved[0], &Bump { by: 1 }, None),
            Err(SendError::Unreachable("b".into()))
        );
        assert_eq!(
            sharded.send(&kept[0], &Bump { by: 1 }, None),
            Ok(Route::Local)
        );
        let (_, kept_token) = owner_of(&second, kept[0]).unwrap();
        until_stored(&store, kept[0], (kept_token, 2)).await;

        // b still stands in the fleet, so the moved counters are handed off to it: each left
        // after writing its state through (the store has every bump, with a's token). b has
        // no node on ractor_cluster here, so nobody hears the hand-off; the kept ones run on.
        // The hand-off counts once its `HandedOff` was given up on: b unreachable, that is
        // HANDOFF_WAIT (10 s) after the table change, so the wait allows twice that.
        until(
            "the moved counters are handed off",
            Duration::from_secs(20),
            || kinds.stats().handed_off >= moved.len() as u64,
        )
        .await;
        assert!(moved.iter().all(|key| !counters.is_active(key)));
        assert!(kept.iter().all(|key| counters.is_active(key)));
        assert_eq!(kinds.released(), 0, "nothing was dropped on the floor");
        for key in &moved {
            let (_, ours) = owner_of(&first, *key).unwrap();
            assert_eq!(stored(&store, *key).await, Some((ours, 1)), "counter {key}");
        }

        // A send straight to the entities (not through the fleet) for a key the node does not
        // own activates nothing here: the fleet placed it elsewhere.
        let (_, theirs) = owner_of(&second, moved[0]).unwrap();
        let (_, ours) = owner_of(&first, moved[0]).unwrap();
        assert!(theirs > ours);
        let bump = garrison_protocol::encode_frame(
            &Bump { by: 1 },
            garrison_protocol::FrameMeta::default(),
        )
        .unwrap();
        let bump = bump.validate::<Bump>().unwrap();
        let Err(refused) = counters.send(&moved[0], CounterMsg(bump)) else {
            panic!("activated on a node that does not own it");
        };
        assert_eq!(
            refused.reason,
            garrison_runtime::Refusal::NotOwned {
                kind: "counter",
                key: moved[0].to_string()
            }
        );
        assert!(!counters.is_active(&moved[0]));

        // b's owner writes a moved counter with its newer token; a's late write with its old
        // one (an activation that outlived its shard, as a paused node's would) is refused.
        let snapshot = garrison_protocol::snapshot::write(&Count { count: 100 }).unwrap();
        store
            .write(&[Write::Put {
                kind: "counter".into(),
                key: moved[0].to_string(),
                generation: theirs,
                log_from: 0,
                snapshot: snapshot.clone(),
            }])
            .await
            .unwrap();
        let late = store
            .write(&[Write::Put {
                kind: "counter".into(),
                key: moved[0].to_string(),
                generation: ours,
                log_from: 0,
                snapshot,
            }])
            .await
            .unwrap();
        assert_eq!(late, vec![Outcome::Fenced { stored: theirs }]);
        assert_eq!(stored(&store, moved[0]).await, Some((theirs, 100)));

        // a's lease goes (as if it had expired while a was paused): from then on the node
        // delivers nothing to its own entities, whatever table it last read.
        let mut outside = etcd_client::Client::connect([endpoint.as_str()], None)
            .await
            .unwrap();
        outside.lease_revoke(a.lease()).await.unwrap();
        until("a learns its lease is gone", Duration::from_secs(5), || {
            a.standing() == Standing::LeaseLost
        })
        .await;
        until("the node owns nothing", Duration::from_secs(5), || {
            node.table().owned_by("a").next().is_none()
        })
        .await;
        // Its entities go too: released at once when the node learned of the lapse before the
        // table that moved them; when the coordinator's new table came first, the hand-off it
        // started sees the lease gone (polled every 10 ms) and releases them instead.
        until(
            "the kept counters are released",
            Duration::from_secs(5),
            || {
                kept.iter().all(|key| !counters.is_active(key))
                    && kinds.released() >= kept.len() as u64
            },
        )
        .await;
        let refused = sharded.send(&kept[0], &Bump { by: 1 }, None);
        assert!(
            matches!(
                refused,
                Err(SendError::NoOwner(_) | SendError::Unreachable(_))
            ),
            "{refused:?}"
        );
        assert!(following.applied() >= 3);
        assert_eq!(stored(&store, kept[0]).await, Some((kept_token, 2)));

        drop((following, sharded));
        b.leave().await.unwrap();
        tree.stop().await.unwrap();
        // The follower's task lets go of its handle once its abort is seen.
        until(
            "the last handle to the node",
            Duration::from_secs(5),
            || Arc::strong_count(&node) == 1,
        )
        .await;
        Arc::into_inner(node).expect("the last handle").stop().await;
    }
}
