//! The control plane against a real etcd (`GARRISON_ETCD_ENDPOINT`, which `.ci/run` sets after
//! starting one on 127.0.0.1; without it these tests say so and pass, except on CI): nodes join
//! and share the 1,024 shards evenly with one coordinator; a killed coordinator's shards move to
//! the survivors once its lease expires, with new fencing tokens, and a survivor takes over the
//! election; a node that leaves hands its shards over at once; a node whose lease is gone owns
//! nothing; a duplicate node is refused; a malformed table record is ignored by the followers
//! and rebuilt by the coordinator with tokens above every old one.
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
    // A second node with a live id is refused.
    let duplicate = Fleet::join(FleetConfig::new(
        vec![endpoint.clone()],
        &ns,
        NodeInfo {
            id: "a".into(),
            address: "127.0.0.1:1".into(),
            version: "test".into(),
        },
    ))
    .await;
    assert!(matches!(duplicate, Err(FleetError::DuplicateNode(id)) if id == "a"));
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
