//! The control plane on etcd (feature `etcd`): membership with leases, a coordinator chosen by
//! etcd's election, and the shard table as one etcd key.
//!
//! Keys, under `garrison/{namespace}/`:
//! - `nodes/{id}`: the node's [`NodeInfo`] (JSON), attached to its lease (TTL 3 s by default):
//!   a node that stops refreshing it (killed, paused, cut off) disappears when the lease
//!   expires, and one that leaves revokes it at once.
//! - `coordinator`: the election (etcd's `Campaign`) among every node; the leader rebalances.
//! - `table`: the shard table (JSON), written only by the leader, in a transaction that checks
//!   it still holds the election (its leader key's creation revision) and that the table did
//!   not change since it read it. Its version is the etcd key's own version, so tokens only grow,
//!   even over a damaged record.
//!
//! A node whose lease is gone (its keep-alive answered with TTL 0, or unanswered for a TTL)
//! owns nothing from that moment ([`Fleet::owned`] is empty): it must stop its entities, and
//! the store refuses its writes by their older fencing token anyway.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    placement::{Assignment, NodeId, Table},
    shard::{DEFAULT_SHARDS, ShardId},
};

/// What a node announces about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id (stable across restarts of the same node).
    pub id: NodeId,
    /// Where its gateway accepts players.
    pub address: String,
    /// Its version (a rolling deploy runs two).
    pub version: String,
    /// Where its peers reach it on ractor_cluster (`host:port`; empty: not reachable).
    #[serde(default)]
    pub peer: String,
    /// It is leaving ([`Fleet::drain`]): the coordinator places no shard on it, so its shards
    /// move to the others while it still runs and hands them over.
    #[serde(default)]
    pub draining: bool,
}

/// How a node joins the fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// etcd's client URLs (`http://127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// The fleet's key prefix (`garrison/{namespace}/`): several fleets may share one etcd.
    pub namespace: String,
    /// This node.
    pub node: NodeInfo,
    /// The lease's time to live: how long a silent node keeps its shards.
    pub lease_ttl: Duration,
    /// Virtual shards (every node of a fleet must agree).
    pub shards: u16,
    /// How long joining waits for a live node with the same id to go (the node's previous
    /// process, killed: its lease expires within a TTL) before it refuses with
    /// [`FleetError::DuplicateNode`].
    pub join_wait: Duration,
}

impl FleetConfig {
    /// A node `node` of fleet `namespace` on etcd at `endpoints`: 3 s leases, 1,024 shards, and
    /// up to 6 s for a previous process of the node to be gone.
    pub fn new(endpoints: Vec<String>, namespace: impl Into<String>, node: NodeInfo) -> Self {
        FleetConfig {
            endpoints,
            namespace: namespace.into(),
            node,
            lease_ttl: Duration::from_secs(3),
            shards: DEFAULT_SHARDS,
            join_wait: Duration::from_secs(6),
        }
    }
}

/// Why joining or running in the fleet failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// etcd refused or could not be reached.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A node with this id is already in the fleet (its lease is live).
    #[error("node {0} is already in the fleet")]
    DuplicateNode(NodeId),
    /// A record in etcd is not what Garrison writes.
    #[error("the {key} record is malformed: {reason}")]
    Malformed {
        /// The key.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// This node's record is gone from etcd (its lease expired): it is no member to drain.
    #[error("node {0} is not in the fleet any more (its lease expired)")]
    NotMember(NodeId),
    /// etcd did not answer in time.
    #[error("etcd did not answer {what} within {waited:?}")]
    TimedOut {
        /// The call.
        what: &'static str,
        /// How long it waited.
        waited: Duration,
    },
}

/// How long a call to etcd made on the way out ([`Fleet::drain`], [`Fleet::leave`]) waits for
/// its answer: a node stopping must not hang on an unreachable etcd.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// `call`, or [`FleetError::TimedOut`] after [`CALL_TIMEOUT`].
async fn in_time<T>(
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, FleetError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(FleetError::TimedOut {
            what,
            waited: CALL_TIMEOUT,
        }),
    }
}

/// Where this node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Its lease is live: it owns what the table gives it.
    Member,
    /// Its lease is gone: it owns nothing, and must stop its entities.
    LeaseLost,
}

/// The table's JSON form.
#[derive(Serialize, Deserialize)]
struct TableRecord {
    version: u64,
    /// Every owner once.
    nodes: Vec<NodeId>,
    /// Per shard: an index into `nodes`, or -1 for none.
    owners: Vec<i32>,
    /// Per shard: its fencing token.
    tokens: Vec<u64>,
    /// Per shard: an index into `nodes` of its owner before its token's change, or -1 for
    /// none (absent in records written before it existed: no shard names one).
    #[serde(default)]
    froms: Vec<i32>,
}

fn encode_table(table: &Table) -> Vec<u8> {
    let mut nodes: Vec<NodeId> = table
        .shards
        .iter()
        .flat_map(|a| a.node.iter().chain(a.from.iter()))
        .cloned()
        .collect();
    nodes.sort();
    nodes.dedup();
    let index = |node: &Option<NodeId>| match node {
        Some(node) => nodes.binary_search(node).map_or(-1, |i| i as i32),
        None => -1,
    };
    let owners = table.shards.iter().map(|a| index(&a.node)).collect();
    let froms = table.shards.iter().map(|a| index(&a.from)).collect();
    let tokens = table.shards.iter().map(|a| a.token).collect();
    let record = TableRecord {
        version: table.version,
        nodes,
        owners,
        tokens,
        froms,
    };
    serde_json::to_vec(&record).expect("a table serializes")
}

/// Reads a table record, checking it is whole: `shards` shards, owners that exist.
fn decode_table(bytes: &[u8], shards: u16) -> Result<Table, String> {
    let mut record: TableRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let count = usize::from(shards);
    if record.froms.is_empty() {
        record.froms = vec![-1; record.owners.len()];
    }
    if record.owners.len() != count || record.tokens.len() != count || record.froms.len() != count {
        return Err(format!(
            "{} owners, {} tokens and {} previous owners for {count} shards",
            record.owners.len(),
            record.tokens.len(),
            record.froms.len()
        ));
    }
    let node = |index: i32| -> Result<Option<NodeId>, String> {
        match index {
            -1 => Ok(None),
            i => Ok(Some(
                record
                    .nodes
                    .get(usize::try_from(i).map_err(|_| format!("owner {i}"))?)
                    .ok_or_else(|| format!("owner {i} of {} nodes", record.nodes.len()))?
                    .clone(),
            )),
        }
    };
    let shards = record
        .owners
        .iter()
        .zip(&record.tokens)
        .zip(&record.froms)
        .map(|((owner, token), from)| {
            Ok(Assignment {
                node: node(*owner)?,
                token: *token,
                from: node(*from)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Table {
        version: record.version,
        shards,
    })
}

/// The fleet's keys.
#[derive(Debug, Clone)]
struct Keys {
    nodes: String,
    node: String,
    election: String,
    table: String,
}

impl Keys {
    fn new(namespace: &str, node: &str) -> Keys {
        let root = format!("garrison/{namespace}/");
        Keys {
            nodes: format!("{root}nodes/"),
            node: format!("{root}nodes/{node}"),
            election: format!("{root}coordinator"),
            table: format!("{root}table"),
        }
    }
}

/// Counters of what the node saw.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Table records refused as malformed (the last good table stays).
    pub malformed_tables: std::sync::atomic::AtomicU64,
    /// Tables this node wrote as the coordinator.
    pub tables_written: std::sync::atomic::AtomicU64,
}

/// This node's place in the fleet: its lease kept alive, its coordinator campaign, and the
/// shard table as etcd has it. Dropping it stops all three without revoking the lease (as a
/// killed process would: the fleet notices when the lease expires); [`Fleet::leave`] leaves
/// at once.
pub struct Fleet {
    config: FleetConfig,
    client: Client,
    lease: i64,
    table: watch::Receiver<Arc<Table>>,
    standing: watch::Receiver<Standing>,
    coordinator: watch::Receiver<bool>,
    members: watch::Receiver<Arc<Members>>,
    deadline: watch::Receiver<Option<Instant>>,
    stats: Arc<FleetStats>,
    tasks: Vec<JoinHandle<()>>,
}

/// The fleet's live nodes as etcd has them, by id.
pub type Members = std::collections::BTreeMap<NodeId, NodeInfo>;

impl Drop for Fleet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("node", &self.config.node.id)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Joins the fleet: grants a lease, registers the node under it, and starts keeping it
    /// alive, campaigning to coordinate, and following the table.
    ///
    /// # Errors
    /// [`FleetError::Etcd`] when etcd cannot be reached; [`FleetError::DuplicateNode`] when a
    /// live node has this id.
    pub async fn join(config: FleetConfig) -> Result<Fleet, FleetError> {
        let mut client = Client::connect(&config.endpoints, None).await?;
        let keys = Keys::new(&config.namespace, &config.node.id);
        let ttl = i64::try_from(config.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let info = serde_json::to_vec(&config.node).expect("node info serializes");
        // Registered only if no live node has the id; a previous process of this node (killed)
        // holds it until its lease expires. Each try takes a fresh lease, so none runs out
        // while it waits.
        let giving_up = tokio::time::Instant::now() + config.join_wait;
        let (lease, granted_at) = loop {
            let granted_at = Instant::now();
            let lease = client.lease_grant(ttl, None).await?.id();
            let registered = client
                .txn(
                    Txn::new()
                        .when([Compare::version(keys.node.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            keys.node.clone(),
                            info.clone(),
                            Some(PutOptions::new().with_lease(lease)),
                        )]),
                )
                .await?;
            if registered.succeeded() {
                break (lease, granted_at);
            }
            let _ = client.lease_revoke(lease).await;
            if tokio::time::Instant::now() >= giving_up {
                return Err(FleetError::DuplicateNode(config.node.id.clone()));
            }
            // A back-off while the old lease runs out (no event tells when).
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (standing_tx, standing) = watch::channel(Standing::Member);
        let (table_tx, table) = watch::channel(Arc::new(Table::empty(config.shards)));
        let (coordinator_tx, coordinator) = watch::channel(false);
        let (members_tx, members) = watch::channel(Arc::new(Members::new()));
        // Granted just now: the lease holds at least until a TTL after the grant was asked for.
        let (deadline_tx, deadline) =
            watch::channel(Some(granted_at + lease_margin(config.lease_ttl)));
        let stats = Arc::new(FleetStats::default());
        let tasks = vec![
            tokio::spawn(keep_alive(
                client.clone(),
                lease,
                config.lease_ttl,
                standing_tx,
                deadline_tx,
            )),
            tokio::spawn(follow_members(client.clone(), keys.clone(), members_tx)),
            tokio::spawn(follow_table(
                client.clone(),
                keys.clone(),
                config.shards,
                table_tx,
                stats.clone(),
            )),
            tokio::spawn(coordinate(
                client.clone(),
                keys,
                config.clone(),
                lease,
                coordinator_tx,
                stats.clone(),
            )),
        ];
        Ok(Fleet {
            config,
            client,
            lease,
            table,
            standing,
            coordinator,
            members,
            deadline,
            stats,
            tasks,
        })
    }

    /// The fleet's live nodes as this node last read them.
    pub fn members(&self) -> Arc<Members> {
        self.members.borrow().clone()
    }

    /// A receiver of every change of the fleet's live nodes.
    pub fn subscribe_members(&self) -> watch::Receiver<Arc<Members>> {
        self.members.clone()
    }

    /// Until when this node's lease surely holds, on this process's monotonic clock: a TTL
    /// (less a tenth, for the clocks' drift) after the last keep-alive etcd confirmed was
    /// *sent*, so etcd, which counts from when it *received* it, expires the lease no earlier.
    /// `None` once the lease is known to be gone. A node acts on its shards only before this
    /// instant: past it, another node may have them.
    pub fn lease_deadline(&self) -> Option<Instant> {
        *self.deadline.borrow()
    }

    /// A receiver of every renewal of [`Fleet::lease_deadline`].
    pub fn subscribe_lease_deadline(&self) -> watch::Receiver<Option<Instant>> {
        self.deadline.clone()
    }

    /// Starts leaving the fleet in order: the node's record says it is draining, so the
    /// coordinator moves every shard it owns to the other nodes (each a planned hand-off, see
    /// `fleet`), while the node keeps its lease and serves until it has handed them over; then
    /// call [`Fleet::leave`]. A fleet of one keeps its shards (there is nowhere to move them).
    ///
    /// # Errors
    /// [`FleetError::Etcd`] when etcd cannot be reached, [`FleetError::TimedOut`] when it does
    /// not answer within [`CALL_TIMEOUT`], [`FleetError::NotMember`] when the node's record is
    /// gone (its lease expired: its shards move without a hand-off).
    pub async fn drain(&self) -> Result<(), FleetError> {
        let keys = Keys::new(&self.config.namespace, &self.config.node.id);
        let info = NodeInfo {
            draining: true,
            ..self.config.node.clone()
        };
        let record = serde_json::to_vec(&info).expect("node info serializes");
        let mut client = self.client.clone();
        // Only while the node's own record (under its lease) is there.
        let done = in_time(
            "the drain",
            client.txn(
                Txn::new()
                    .when([Compare::lease(
                        keys.node.clone(),
                        CompareOp::Equal,
                        self.lease,
                    )])
                    .and_then([TxnOp::put(
                        keys.node,
                        record,
                        Some(PutOptions::new().with_lease(self.lease)),
                    )]),
            ),
        )
        .await?;
        if !done.succeeded() {
            return Err(FleetError::NotMember(self.config.node.id.clone()));
        }
        Ok(())
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.config.node.id
    }

    /// The table as this node last read it.
    pub fn table(&self) -> Arc<Table> {
        self.table.borrow().clone()
    }

    /// A receiver of every table this node reads.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Table>> {
        self.table.clone()
    }

    /// Where the node stands.
    pub fn standing(&self) -> Standing {
        *self.standing.borrow()
    }

    /// A receiver of every change of where the node stands.
    pub fn subscribe_standing(&self) -> watch::Receiver<Standing> {
        self.standing.clone()
    }

    /// The shards this node owns now, with their fencing tokens: none once its lease is gone.
    pub fn owned(&self) -> Vec<(ShardId, u64)> {
        if self.standing() == Standing::LeaseLost {
            return Vec::new();
        }
        self.table().owned_by(&self.config.node.id).collect()
    }

    /// Whether this node is the coordinator now.
    pub fn is_coordinator(&self) -> bool {
        *self.coordinator.borrow()
    }

    /// What the node counted.
    pub fn stats(&self) -> &FleetStats {
        &self.stats
    }

    /// The node's lease id (for tests that revoke it from outside, as its expiry would).
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Leaves the fleet now: the lease is revoked, so the node's key and its election go at
    /// once and the coordinator rebalances without waiting for a TTL.
    ///
    /// # Errors
    /// [`FleetError::Etcd`] when etcd cannot be reached, [`FleetError::TimedOut`] when it does
    /// not answer within [`CALL_TIMEOUT`] (the lease then expires on its own).
    pub async fn leave(mut self) -> Result<(), FleetError> {
        for task in &self.tasks {
            task.abort();
        }
        in_time("the lease's revoke", self.client.lease_revoke(self.lease)).await?;
        Ok(())
    }
}

/// How long a lease surely holds after a keep-alive sent at some instant: its TTL less a tenth
/// (at least 100 ms less), for the drift between this process's clock and etcd's.
fn lease_margin(ttl: Duration) -> Duration {
    ttl.saturating_sub((ttl / 10).max(Duration::from_millis(100)))
}

/// Refreshes the lease every third of its TTL; the lease is lost when etcd says so (TTL 0) or
/// when no refresh succeeded for a whole TTL. Every confirmed refresh moves the deadline until
/// which the lease surely holds.
async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    standing: watch::Sender<Standing>,
    deadline: watch::Sender<Option<Instant>>,
) {
    let every = (ttl / 3).max(Duration::from_millis(100));
    let mut last_ok = tokio::time::Instant::now();
    let mut keeper = None;
    loop {
        if keeper.is_none() {
            keeper = client.lease_keep_alive(lease).await.ok();
        }
        let sent_at = Instant::now();
        let refreshed = match &mut keeper {
            Some((sender, stream)) => match sender.keep_alive().await {
                Ok(()) => match tokio::time::timeout(every, stream.message()).await {
                    Ok(Ok(Some(response))) if response.ttl() > 0 => {
                        let granted = Duration::from_secs(response.ttl().unsigned_abs());
                        let _ = deadline.send(Some(sent_at + lease_margin(granted)));
                        true
                    }
                    Ok(Ok(Some(_))) => {
                        // TTL 0: etcd no longer knows the lease.
                        let _ = deadline.send(None);
                        let _ = standing.send(Standing::LeaseLost);
                        return;
                    }
                    _ => false,
                },
                Err(_) => false,
            },
            None => false,
        };
        if refreshed {
            last_ok = tokio::time::Instant::now();
        } else {
            keeper = None;
            if last_ok.elapsed() >= ttl {
                let _ = deadline.send(None);
                let _ = standing.send(Standing::LeaseLost);
                return;
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Follows the table key: every valid record becomes the current table; a malformed one is
/// counted and ignored.
async fn follow_table(
    mut client: Client,
    keys: Keys,
    shards: u16,
    table: watch::Sender<Arc<Table>>,
    stats: Arc<FleetStats>,
) {
    let accept = |bytes: &[u8]| match decode_table(bytes, shards) {
        Ok(next) => {
            table.send_if_modified(|current| {
                let newer = next.version > current.version;
                if newer {
                    *current = Arc::new(next);
                }
                newer
            });
        }
        Err(reason) => {
            stats
                .malformed_tables
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(key = %keys.table, %reason, "a malformed shard table is ignored");
        }
    };
    loop {
        let Ok(current) = client.get(keys.table.clone(), None).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if let Some(kv) = current.kvs().first() {
            accept(kv.value());
        }
        let from = current.header().map_or(0, |h| h.revision()) + 1;
        let Ok(mut stream) = client
            .watch(
                keys.table.clone(),
                Some(WatchOptions::new().with_start_revision(from)),
            )
            .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Ok(Some(response)) = stream.message().await {
            for event in response.events() {
                if let (EventType::Put, Some(kv)) = (event.event_type(), event.kv()) {
                    accept(kv.value());
                }
            }
        }
    }
}

/// Follows the nodes' records: every change of the fleet's live nodes (a join, a lease gone,
/// a node draining) is published; a malformed record is left out.
async fn follow_members(mut client: Client, keys: Keys, members: watch::Sender<Arc<Members>>) {
    loop {
        let Ok(current) = client
            .get(keys.nodes.clone(), Some(GetOptions::new().with_prefix()))
            .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut known = Members::new();
        for kv in current.kvs() {
            if let Ok(info) = serde_json::from_slice::<NodeInfo>(kv.value()) {
                known.insert(info.id.clone(), info);
            }
        }
        let _ = members.send(Arc::new(known.clone()));
        let from = current.header().map_or(0, |h| h.revision()) + 1;
        let Ok(mut stream) = client
            .watch(
                keys.nodes.clone(),
                Some(WatchOptions::new().with_prefix().with_start_revision(from)),
            )
            .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Ok(Some(response)) = stream.message().await {
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let id = kv
                    .key()
                    .strip_prefix(keys.nodes.as_bytes())
                    .map(|id| String::from_utf8_lossy(id).into_owned());
                match event.event_type() {
                    EventType::Put => {
                        if let Ok(info) = serde_json::from_slice::<NodeInfo>(kv.value()) {
                            known.insert(info.id.clone(), info);
                        }
                    }
                    EventType::Delete => {
                        if let Some(id) = id {
                            known.remove(&id);
                        }
                    }
                }
            }
            let _ = members.send(Arc::new(known.clone()));
        }
    }
}

/// Campaigns for the coordinator's election; while leading, rebalances the table whenever the
/// set of nodes changes.
async fn coordinate(
    mut client: Client,
    keys: Keys,
    config: FleetConfig,
    lease: i64,
    leading: watch::Sender<bool>,
    stats: Arc<FleetStats>,
) {
    loop {
        let Ok(mut won) = client
            .campaign(keys.election.clone(), config.node.id.clone(), lease)
            .await
        else {
            // The lease is gone (this node lost its place) or etcd is away: try again later.
            tokio::time::sleep(config.lease_ttl / 3).await;
            continue;
        };
        let Some(leader) = won.take_leader() else {
            continue;
        };
        let _ = leading.send(true);
        let result = lead(&mut client, &keys, &config, &leader, &stats).await;
        let _ = leading.send(false);
        if let Err(error) = result {
            tracing::warn!(node = %config.node.id, %error, "stopped coordinating");
        }
        tokio::time::sleep(config.lease_ttl / 3).await;
    }
}

/// One term as the coordinator: rebalance, then again at every change of the nodes, until a
/// write finds the election lost.
async fn lead(
    client: &mut Client,
    keys: &Keys,
    config: &FleetConfig,
    leader: &etcd_client::LeaderKey,
    stats: &FleetStats,
) -> Result<(), FleetError> {
    loop {
        let nodes = client
            .get(keys.nodes.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        let (mut ids, mut draining) = (Vec::new(), Vec::new());
        for kv in nodes.kvs() {
            match serde_json::from_slice::<NodeInfo>(kv.value()) {
                Ok(info) if info.draining => draining.push(info.id),
                Ok(info) => ids.push(info.id),
                Err(error) => tracing::warn!(
                    key = %String::from_utf8_lossy(kv.key()),
                    %error,
                    "a malformed node record is left out of the table"
                ),
            }
        }
        // Draining nodes get no shards while any other node can take them.
        if ids.is_empty() {
            ids = draining;
        }
        let revision = nodes.header().map_or(0, |h| h.revision());
        let current = client.get(keys.table.clone(), None).await?;
        let (base, key_version, table_revision) = match current.kvs().first() {
            Some(kv) => {
                let base = decode_table(kv.value(), config.shards).unwrap_or_else(|reason| {
                    tracing::warn!(%reason, "the shard table is rebuilt from a malformed record");
                    Table {
                        version: kv.version() as u64,
                        ..Table::empty(config.shards)
                    }
                });
                (base, kv.version() as u64, kv.mod_revision())
            }
            None => (Table::empty(config.shards), 0, 0),
        };
        let (next, moves) = base.rebalance_at(&ids, key_version + 1);
        if moves.moved + moves.placed > 0 || base.version != key_version {
            let next = Table {
                version: key_version + 1,
                ..next
            };
            let written = client
                .txn(
                    Txn::new()
                        .when([
                            Compare::create_revision(
                                leader.key().to_vec(),
                                CompareOp::Equal,
                                leader.rev(),
                            ),
                            Compare::mod_revision(
                                keys.table.clone(),
                                CompareOp::Equal,
                                table_revision,
                            ),
                        ])
                        .and_then([TxnOp::put(keys.table.clone(), encode_table(&next), None)]),
                )
                .await?;
            if !written.succeeded() {
                // Either the election is lost (stop leading) or the table moved under us
                // (read again).
                let still = client.get(leader.key().to_vec(), None).await?;
                if still.kvs().is_empty() {
                    return Ok(());
                }
                continue;
            }
            stats
                .tables_written
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                version = next.version,
                nodes = ids.len(),
                moved = moves.moved,
                placed = moves.placed,
                "shard table rebalanced"
            );
        }
        // Wait for the next change of the nodes after what was read.
        let mut stream = client
            .watch(
                keys.nodes.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await?;
        // Also wake when the election key goes (this node lost it).
        loop {
            match tokio::time::timeout(config.lease_ttl, stream.message()).await {
                Ok(Ok(Some(response))) if !response.events().is_empty() => break,
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) | Ok(Err(_)) => break,
                Err(_) => {
                    let still = client.get(leader.key().to_vec(), None).await?;
                    if still.kvs().is_empty() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_record_round_trips_and_a_damaged_one_is_refused() {
        let nodes: Vec<NodeId> = vec!["a".into(), "b".into(), "c".into()];
        let (table, _) = Table::empty(64).rebalance(&nodes);
        let bytes = encode_table(&table);
        assert_eq!(decode_table(&bytes, 64).unwrap(), table);
        // After a node left, its shards name it as their previous owner, and it is kept.
        let (moved, _) = table.rebalance(&nodes[..2]);
        assert!(moved.shards.iter().any(|a| a.from.as_deref() == Some("c")));
        assert_eq!(decode_table(&encode_table(&moved), 64).unwrap(), moved);
        assert!(decode_table(&bytes, 65).is_err(), "another shard count");
        assert!(decode_table(b"{", 64).is_err());
        let damaged =
            String::from_utf8(bytes)
                .unwrap()
                .replacen("\"owners\":[", "\"owners\":[7,", 1);
        assert!(decode_table(damaged.as_bytes(), 64).is_err());
        let bad_owner = serde_json::to_vec(&TableRecord {
            version: 1,
            nodes: vec!["a".into()],
            owners: vec![3; 64],
            tokens: vec![1; 64],
            froms: Vec::new(),
        })
        .unwrap();
        assert!(
            decode_table(&bad_owner, 64)
                .unwrap_err()
                .contains("owner 3")
        );
        // A record from before previous owners were kept reads with none.
        let older = serde_json::to_vec(&serde_json::json!({
            "version": 1, "nodes": ["a"], "owners": vec![0; 64], "tokens": vec![1; 64],
        }))
        .unwrap();
        let read = decode_table(&older, 64).unwrap();
        assert!(
            read.shards
                .iter()
                .all(|a| a.node.as_deref() == Some("a") && a.from.is_none())
        );
    }
}
