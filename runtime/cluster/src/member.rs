//! A node at work in its fleet (features `etcd` and `nodes`): [`run`] keeps a [`Node`] and its
//! [`Kinds`] on what its etcd member ([`Fleet`]) reads.
//!
//! - **Peers**: every live node that announces a peer address is connected to on
//!   ractor_cluster (by the node with the smaller id, so a pair opens one session).
//! - **Lease**: every deadline the keep-alive confirms renews the kinds' [`Lease`]; once the
//!   lease is gone it is revoked, so nothing of the sharded kinds is handled here any more, even
//!   in a process that was paused past it and has not heard yet.
//! - **Table**: every table etcd has becomes the one the node routes and accepts by; once the
//!   lease is gone the node acts on that table with none of its own shards (it delivers nothing
//!   to its entities and releases them) until the new owners are known.
//! - **Hand-offs**: the live nodes are told to the kinds before the table, so a shard moved away
//!   from a node that still stands waits for its hand-off, and one taken from a node that is
//!   gone runs from the store; every second, shards that waited too long run anyway.
//!
//! [`Lease`]: garrison_runtime::Lease

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::etcd::{Fleet, Standing};
use crate::fleet::Kinds;
use crate::node::Node;
use crate::placement::Table;

/// How long a node waits for a peer it connects to to authenticate.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// A node acting in its fleet ([`run`]). Dropping it stops acting: the node keeps the last
/// table it was given, and the kinds' lease is no longer renewed.
#[derive(Debug)]
pub struct Member {
    task: tokio::task::JoinHandle<()>,
    applied: Arc<AtomicU64>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Member {
    /// How many tables the node has been given so far (one per table version read, and one
    /// per change of its standing).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }
}

/// Keeps `node` and its `kinds` acting on `fleet` (see the module documentation). Must be
/// called on a tokio runtime.
pub fn run(fleet: &Fleet, node: Arc<Node>, kinds: Kinds) -> Member {
    kinds.attach(&node);
    let mut tables = fleet.subscribe();
    let mut standing = fleet.subscribe_standing();
    let mut members = fleet.subscribe_members();
    let mut deadline = fleet.subscribe_lease_deadline();
    let applied = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&applied);
    let connecting: Arc<Mutex<HashSet<String>>> = Arc::default();
    let task = tokio::spawn(async move {
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        let mut acted_on: Option<(u64, bool)> = None;
        // Until etcd's first read of the members, the kinds are not told any: an old owner
        // then counts as standing (its shards wait for its hand-off, boundedly), not as gone.
        let mut members_known = false;
        loop {
            match *deadline.borrow_and_update() {
                Some(until) => kinds.lease().renew_until(until),
                None => kinds.lease().revoke(),
            }
            let live = {
                let read = members.borrow_and_update();
                members_known |= read.has_changed();
                Arc::clone(&read)
            };
            for info in live.values() {
                let Ok(addr) = info.peer.parse::<SocketAddr>() else {
                    continue;
                };
                // The smaller id connects: one session per pair.
                if info.id.as_str() <= node.id() || node.reaches(&info.id) {
                    continue;
                }
                if !connecting
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(info.id.clone())
                {
                    continue;
                }
                let (node, connecting, peer) =
                    (Arc::clone(&node), Arc::clone(&connecting), info.id.clone());
                tokio::spawn(async move {
                    if let Err(error) = node.connect(addr, &peer, CONNECT_WAIT).await {
                        tracing::warn!(node = node.id(), %peer, %error, "peer not reached");
                    }
                    connecting
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&peer);
                });
            }
            if members_known {
                kinds.members_changed(live.keys().cloned().collect());
            }
            let table = Arc::clone(&tables.borrow_and_update());
            let member = *standing.borrow_and_update() == Standing::Member;
            if acted_on != Some((table.version, member)) {
                kinds.set_member(member);
                let acting = if member {
                    (*table).clone()
                } else {
                    without(&table, node.id())
                };
                match node.set_table(acting) {
                    Ok(()) => {
                        counted.fetch_add(1, Ordering::Relaxed);
                        acted_on = Some((table.version, member));
                    }
                    Err(error) => tracing::error!(
                        node = node.id(),
                        version = table.version,
                        "the fleet's table does not fit this node, which keeps its last one: {error}"
                    ),
                }
            }
            tokio::select! {
                changed = tables.changed() => if changed.is_err() { return },
                changed = standing.changed() => if changed.is_err() { return },
                changed = members.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // `changed` marks the value seen: known from here on.
                    members_known = true;
                }
                changed = deadline.changed() => if changed.is_err() { return },
                _ = sweep.tick() => kinds.sweep(),
            }
        }
    });
    Member { task, applied }
}

/// `table` with none of `node`'s shards assigned.
fn without(table: &Table, node: &str) -> Table {
    let mut table = table.clone();
    for assignment in &mut table.shards {
        if assignment.node.as_deref() == Some(node) {
            assignment.node = None;
        }
    }
    table
}
