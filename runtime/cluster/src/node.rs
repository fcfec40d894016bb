//! One node of a fleet on `ractor_cluster` (feature `nodes`): the node server that
//! authenticates its peers by cookie, and the router actor that takes [`Envelope`]s for the
//! entities whose shards this node owns.
//!
//! Every node's router joins the process group [`router_group`]`(id)`; `ractor_cluster`
//! replicates process groups between authenticated nodes, so a node finds a peer's router by
//! the peer's id once their session is up. What a peer sends is validated before anything
//! reads it ([`Envelope::check`]), then checked against this node's shard table: a message for
//! a shard this node does not own ([`RefusalReason::NotOwner`]), or routed by a newer table
//! than this node has ([`RefusalReason::Behind`]), is refused. Every refusal is counted here
//! and sent back to the sender's router, which dead-letters the message with the reason
//! ([`DeadLetter`]), so a refused message never vanishes.
//!
//! Queues: the router's mailbox is ractor's (unbounded); it is drained at validation speed,
//! each item is at most one bounded frame ([`NodeServer::with_max_inbound_frame_size`]), and
//! the bound that matters is the entity's own mailbox behind [`Inbox::deliver`], which refuses
//! when full ([`InboxRefusal::Rejected`], dead-lettered at the sender). A message cast to a
//! node that dies before its router reads it is lost without a refusal: casts between nodes
//! are fire-and-forget, and the sender learns of the loss only as [`SendError::Unreachable`]
//! on its next send. Handoff and failover (issue 15) close that gap with the input log.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use garrison_protocol::TraceContext;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, pg};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage, RactorClusterMessage};
use thiserror::Error;

use crate::envelope::{
    Control, ENVELOPE_VERSION, Envelope, EnvelopeError, MAX_ENVELOPE, MAX_NODE_ID, Refusal,
    RefusalReason, trace_bytes,
};
use crate::placement::{NodeId, Table};
use crate::shard::{ShardId, shard_of};

/// The process group a node's router joins: `garrison.router.<node id>`.
pub fn router_group(node: &str) -> String {
    format!("garrison.router.{node}")
}

/// The largest frame a node reads from a peer: one envelope and ractor_cluster's framing.
/// A peer that sends more is disconnected by ractor_cluster before the frame is allocated.
pub const MAX_FRAME: u64 = MAX_ENVELOPE as u64 + 64 * 1024;

/// What a router takes from its peers. All carry rkyv bytes validated on receipt.
#[derive(RactorClusterMessage)]
pub enum RouterMsg {
    /// An [`Envelope`] for an entity on this node.
    Deliver(Vec<u8>),
    /// A [`Refusal`] of an envelope this node sent.
    Refused(Vec<u8>),
    /// A [`Control`] message from a peer.
    Control(Vec<u8>),
}

/// Envelopes (and hand-offs) a node keeps while its table is behind the one they were routed
/// by, at most; past it, refused as [`RefusalReason::Behind`].
pub const MAX_PARKED: usize = 16_384;
/// How long a parked envelope waits for the node's table to catch up before it is refused as
/// [`RefusalReason::Behind`].
pub const PARK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an [`Inbox`] did not take a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InboxRefusal {
    /// No kind of that name is served on this node.
    #[error("no kind `{0}` is served here")]
    UnknownKind(String),
    /// The kind refused the message: an undecodable payload, a full mailbox, a stopped entity.
    #[error("{0}")]
    Rejected(String),
}

/// Where a node delivers the messages for its own entities: the entity runtime, or a test.
pub trait Inbox: Send + Sync + 'static {
    /// Delivers one message for the entity `key` of `kind`; the payload is the kind's encoding,
    /// validated by the kind.
    fn deliver(
        &self,
        kind: &str,
        key: &[u8],
        payload: &[u8],
        trace: Option<TraceContext>,
    ) -> Result<(), InboxRefusal>;

    /// Delivers one message addressed to this node itself ([`Node::send_to`]), not by shard:
    /// for kinds whose entities live where their player's session is. Refused by default.
    fn deliver_direct(
        &self,
        kind: &str,
        key: &[u8],
        payload: &[u8],
        trace: Option<TraceContext>,
    ) -> Result<(), InboxRefusal> {
        let _ = (key, payload, trace);
        Err(InboxRefusal::UnknownKind(kind.to_owned()))
    }

    /// Told the table node `node` acts on, before the node routes or accepts by it (at
    /// [`Node::start`] and every [`Node::set_table`]): the entity runtime takes each shard's
    /// fencing token from it. Nothing by default. It runs with the node's table locked: it
    /// must not call the node back (what must be sent, it sends from a task).
    fn table_changed(&self, node: &str, table: &Table) {
        let _ = (node, table);
    }

    /// Peer `from` handed over `shards` (moved to this node by table `version`, which this
    /// node's table has reached): their entities may run here now. Nothing by default.
    fn handed_off(&self, from: &str, version: u64, shards: &[u16]) {
        let _ = (from, version, shards);
    }

    /// Whether this node may act on its shards now (its fleet lease holds). While it may not,
    /// what peers send for them is kept until the table moves on (then relayed to the new
    /// owner) instead of reaching entities that would only drop it. Always by default.
    fn accepting(&self) -> bool {
        true
    }
}

impl<F> Inbox for F
where
    F: Fn(&str, &[u8], &[u8], Option<TraceContext>) -> Result<(), InboxRefusal>
        + Send
        + Sync
        + 'static,
{
    fn deliver(
        &self,
        kind: &str,
        key: &[u8],
        payload: &[u8],
        trace: Option<TraceContext>,
    ) -> Result<(), InboxRefusal> {
        self(kind, key, payload, trace)
    }
}

/// A message this node sent that a peer refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The [`Route::Forwarded`] id the message was sent with.
    pub id: u64,
    /// The peer's refusal.
    pub refusal: Refusal,
}

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's id in the fleet (at most [`MAX_NODE_ID`] bytes).
    pub id: NodeId,
    /// The secret every node of the fleet shares; a peer with another cookie is refused.
    pub cookie: String,
    /// The address the node listens on for its peers (loopback in tests).
    pub listen: IpAddr,
    /// The port; 0 picks a free one ([`Node::addr`] tells which).
    pub port: u16,
    /// The fleet's shard count.
    pub shards: u16,
}

/// Why a node did not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The id is empty or longer than [`MAX_NODE_ID`].
    #[error("node id `{0}` must be 1 to {MAX_NODE_ID} bytes")]
    Id(String),
    /// The table is for another shard count.
    #[error("the table has {table} shards, the node is configured for {node}")]
    Shards {
        /// The table's.
        table: usize,
        /// The configuration's.
        node: u16,
    },
    /// The listener or an actor did not start.
    #[error("node did not start: {0}")]
    Spawn(String),
}

/// Why a message was not sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SendError {
    /// The table assigns the key's shard to no node.
    #[error("shard {0} has no owner")]
    NoOwner(ShardId),
    /// The owner is not connected to this node.
    #[error("the owner `{0}` of the message's shard is not connected")]
    Unreachable(NodeId),
    /// The message does not fit an envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// This node owns the shard and its inbox refused the message.
    #[error(transparent)]
    Refused(#[from] InboxRefusal),
    /// The message did not encode ([`Sharded::send`](crate::fleet::Sharded::send)).
    #[error("the message did not encode: {0}")]
    Encode(String),
}

/// Where a sent message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node owns the shard: delivered to its inbox.
    Local,
    /// Cast to the owner's router.
    Forwarded {
        /// The owner.
        node: NodeId,
        /// The envelope's id, echoed in a [`DeadLetter`] if the owner refuses it.
        id: u64,
    },
}

/// Why [`Node::connect`] did not reach a peer.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// No TCP connection.
    #[error("cannot connect to {addr}: {detail}")]
    Connect {
        /// The peer's address.
        addr: SocketAddr,
        /// The cause.
        detail: String,
    },
    /// Connected, but the peer's router did not appear in time: the peer refused this node's
    /// cookie, or is not the node named.
    #[error("node `{peer}` at {addr} did not authenticate within {waited:?}")]
    NotAuthenticated {
        /// The peer's id.
        peer: NodeId,
        /// The peer's address.
        addr: SocketAddr,
        /// How long this node waited.
        waited: Duration,
    },
}

/// A node's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Messages this node delivered to its own inbox from [`Node::send`].
    pub local: u64,
    /// Messages this node forwarded to a peer.
    pub forwarded: u64,
    /// Envelopes from peers delivered to the inbox.
    pub received: u64,
    /// Envelopes refused, by [`RefusalReason`] (index `reason as usize - 1`).
    pub refused: [u64; 5],
    /// Refusals of this node's messages, dead-lettered.
    pub dead_letters: u64,
    /// Refusals that could not be sent back (the sender is unknown or gone).
    pub refusals_unsent: u64,
    /// Refusals from peers that failed validation.
    pub bad_refusals: u64,
    /// Peer sessions closed before they authenticated (a wrong cookie, not a node at all).
    pub unauthenticated: u64,
    /// Envelopes routed by a table this node had moved on from, sent on to the shard's owner.
    pub relayed: u64,
    /// Envelopes and hand-offs kept until this node's table caught up with their sender's.
    pub parked: u64,
    /// Messages addressed to this node itself, delivered ([`Node::send_to`]).
    pub direct: u64,
    /// Control messages from peers that failed validation.
    pub bad_controls: u64,
}

impl NodeStats {
    /// Envelopes refused for `reason`.
    pub fn refused(&self, reason: RefusalReason) -> u64 {
        self.refused[reason as usize - 1]
    }
}

#[derive(Default)]
struct Counters {
    local: AtomicU64,
    forwarded: AtomicU64,
    received: AtomicU64,
    refused: [AtomicU64; 5],
    dead_letters: AtomicU64,
    refusals_unsent: AtomicU64,
    bad_refusals: AtomicU64,
    unauthenticated: AtomicU64,
    relayed: AtomicU64,
    parked: AtomicU64,
    direct: AtomicU64,
    bad_controls: AtomicU64,
}

type DeadLetterSink = Box<dyn Fn(DeadLetter) + Send + Sync>;

/// An envelope or hand-off routed by a newer table than this node's, kept until it catches up.
struct Parked {
    since: std::time::Instant,
    /// The envelope's shard (none for a hand-off).
    shard: Option<u16>,
    what: ParkedKind,
}

enum ParkedKind {
    Envelope(Vec<u8>),
    HandedOff {
        from: String,
        version: u64,
        shards: Vec<u16>,
    },
}

struct Shared {
    id: NodeId,
    shards: u16,
    table: RwLock<Table>,
    inbox: Box<dyn Inbox>,
    dead_letters: Mutex<Option<DeadLetterSink>>,
    counters: Counters,
    next_id: AtomicU64,
    parked: Mutex<std::collections::VecDeque<Parked>>,
    /// How many are parked (read without the lock on every envelope taken).
    parked_len: AtomicUsize,
    /// Held while an envelope or a control message is taken, and through a whole unparking:
    /// one at a time, so what waited is taken before what came after it.
    taking: Mutex<()>,
}

impl Shared {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn refuse(
        &self,
        id: u64,
        to: &str,
        kind: &str,
        shard: u16,
        reason: RefusalReason,
        detail: String,
    ) {
        Shared::add(&self.counters.refused[reason as usize - 1]);
        tracing::warn!(
            node = %self.id, from = to, kind, shard, reason = reason.as_str(), %detail,
            "envelope refused"
        );
        let refusal = Refusal {
            id,
            by: self.id.clone(),
            kind: kind.to_owned(),
            shard,
            reason,
            detail,
        };
        let sent = peer_router(to)
            .map(|router| router.cast(RouterMsg::Refused(refusal.encode())).is_ok())
            .unwrap_or(false);
        if !sent {
            Shared::add(&self.counters.refusals_unsent);
        }
    }

    fn take(&self, bytes: &[u8]) {
        let _one = self.taking.lock().unwrap_or_else(PoisonError::into_inner);
        self.take_parked_since(bytes, None);
    }

    /// Whether an envelope for `shard` is parked: a newer one then parks behind it.
    fn parked_for(&self, shard: u16) -> bool {
        self.parked_len.load(Ordering::Acquire) > 0
            && self
                .parked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|parked| parked.shard == Some(shard))
    }

    /// Takes an envelope; `since`: when it was first parked, if it was.
    fn take_parked_since(&self, bytes: &[u8], since: Option<std::time::Instant>) {
        let envelope = match Envelope::check(bytes, self.shards) {
            Ok(envelope) => envelope,
            Err(error) => {
                // Refuse to the sender when the archive names one; bytes that are no envelope
                // at all are only counted and logged.
                match sender_of(bytes) {
                    Some((id, from, kind, shard)) => self.refuse(
                        id,
                        &from,
                        &kind,
                        shard,
                        RefusalReason::Malformed,
                        error.to_string(),
                    ),
                    None => {
                        Shared::add(&self.counters.refused[RefusalReason::Malformed as usize - 1]);
                        tracing::warn!(node = %self.id, %error, "unattributable envelope dropped");
                    }
                }
                return;
            }
        };
        let shard = envelope.shard.to_native();
        let token = envelope.token.to_native();
        let id = envelope.id.to_native();
        if envelope.direct {
            let delivered = self.inbox.deliver_direct(
                envelope.kind.as_str(),
                &envelope.key,
                &envelope.payload,
                envelope.trace_context(),
            );
            return match delivered {
                Ok(()) => Shared::add(&self.counters.direct),
                Err(error) => {
                    let reason = match error {
                        InboxRefusal::UnknownKind(_) => RefusalReason::UnknownKind,
                        InboxRefusal::Rejected(_) => RefusalReason::Rejected,
                    };
                    self.refuse(
                        id,
                        envelope.from.as_str(),
                        envelope.kind.as_str(),
                        shard,
                        reason,
                        error.to_string(),
                    );
                }
            };
        }
        let (owner, mine) = {
            let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
            let assignment = &table.shards[usize::from(shard)];
            (assignment.node.clone(), assignment.token)
        };
        let lapsed = owner.as_deref() == Some(self.id.as_str()) && !self.inbox.accepting();
        if token > mine || lapsed || self.parked_for(shard) {
            // The sender routed by a newer table than this node has: this node may be the
            // shard's new owner and not know it yet, or may have lost it. Or this node's lease
            // lapsed: its table is about to lose the shard. Kept until its table catches up
            // (then delivered or relayed), or refused as behind after a while. And what comes
            // for a shard while something for it is kept waits behind it, in order.
            self.park(ParkedKind::Envelope(bytes.to_vec()), Some(shard), since);
            return;
        }
        let refusal = match owner {
            Some(node) if node == self.id => None,
            Some(node) => {
                // Routed by a table this node has moved on from: sent on, once, to the owner
                // it knows, rather than dead-lettered at a sender that is merely behind.
                if envelope.hops < crate::envelope::MAX_HOPS
                    && let Some(router) = peer_router(&node)
                    && let Ok(bytes) = envelope.forwarded(mine).encode()
                    && router.cast(RouterMsg::Deliver(bytes)).is_ok()
                {
                    Shared::add(&self.counters.relayed);
                    return;
                }
                Some((
                    RefusalReason::NotOwner,
                    format!("shard {shard} is owned by `{node}` at token {mine}"),
                ))
            }
            None => Some((
                RefusalReason::NotOwner,
                format!("shard {shard} has no owner in this node's table"),
            )),
        };
        let refusal = refusal.or_else(|| {
            match self.inbox.deliver(
                envelope.kind.as_str(),
                &envelope.key,
                &envelope.payload,
                envelope.trace_context(),
            ) {
                Ok(()) => None,
                Err(error @ InboxRefusal::UnknownKind(_)) => {
                    Some((RefusalReason::UnknownKind, error.to_string()))
                }
                Err(error @ InboxRefusal::Rejected(_)) => {
                    Some((RefusalReason::Rejected, error.to_string()))
                }
            }
        });
        match refusal {
            None => Shared::add(&self.counters.received),
            Some((reason, detail)) => self.refuse(
                id,
                envelope.from.as_str(),
                envelope.kind.as_str(),
                shard,
                reason,
                detail,
            ),
        }
    }

    fn refused(&self, bytes: &[u8]) {
        match Refusal::decode(bytes) {
            Ok(refusal) => {
                Shared::add(&self.counters.dead_letters);
                tracing::warn!(
                    node = %self.id, by = %refusal.by, kind = %refusal.kind, shard = refusal.shard,
                    reason = refusal.reason.as_str(), detail = %refusal.detail,
                    "message dead-lettered"
                );
                let sink = self
                    .dead_letters
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some(sink) = sink.as_ref() {
                    sink(DeadLetter {
                        id: refusal.id,
                        refusal,
                    });
                }
            }
            Err(error) => {
                Shared::add(&self.counters.bad_refusals);
                tracing::warn!(node = %self.id, %error, "refusal from a peer failed validation");
            }
        }
    }
}

impl Shared {
    /// Keeps what was routed by a newer table than this node's until it catches up, at most
    /// [`MAX_PARKED`] of them (past it, the oldest is refused as behind).
    fn park(&self, what: ParkedKind, shard: Option<u16>, since: Option<std::time::Instant>) {
        if since.is_none() {
            Shared::add(&self.counters.parked);
        }
        let overflow = {
            let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
            parked.push_back(Parked {
                since: since.unwrap_or_else(std::time::Instant::now),
                shard,
                what,
            });
            let oldest = (parked.len() > MAX_PARKED)
                .then(|| parked.pop_front())
                .flatten();
            self.parked_len.store(parked.len(), Ordering::Release);
            oldest
        };
        if let Some(oldest) = overflow {
            self.expire(
                oldest,
                "more than MAX_PARKED envelopes wait for this node's table",
            );
        }
    }

    /// Takes again what waited for the table: what it has caught up with is delivered, what
    /// waited past [`PARK_TIMEOUT`] is refused as behind, the rest waits on.
    fn unpark(&self) {
        let _one = self.taking.lock().unwrap_or_else(PoisonError::into_inner);
        let waiting: Vec<Parked> = {
            let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
            self.parked_len.store(0, Ordering::Release);
            parked.drain(..).collect()
        };
        let version = self
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .version;
        for parked in waiting {
            if parked.since.elapsed() >= PARK_TIMEOUT {
                self.expire(parked, "this node's table did not catch up in time");
                continue;
            }
            match parked.what {
                // Taken again: delivered, refused, or parked again if still ahead.
                ParkedKind::Envelope(bytes) => self.take_parked_since(&bytes, Some(parked.since)),
                ParkedKind::HandedOff {
                    from,
                    version: handed,
                    shards,
                } if handed <= version => self.inbox.handed_off(&from, handed, &shards),
                what => self.park(what, None, Some(parked.since)),
            }
        }
    }

    /// Refuses what waited too long for the table.
    fn expire(&self, parked: Parked, why: &str) {
        match parked.what {
            ParkedKind::Envelope(bytes) => match Envelope::check(&bytes, self.shards) {
                Ok(envelope) => self.refuse(
                    envelope.id.to_native(),
                    envelope.from.as_str(),
                    envelope.kind.as_str(),
                    envelope.shard.to_native(),
                    RefusalReason::Behind,
                    format!("routed by token {}: {why}", envelope.token.to_native()),
                ),
                Err(_) => Shared::add(&self.counters.refused[RefusalReason::Behind as usize - 1]),
            },
            ParkedKind::HandedOff { from, version, .. } => tracing::warn!(
                node = %self.id, %from, version,
                "a hand-off for a table this node never reached was dropped: {why}"
            ),
        }
    }

    fn control(&self, bytes: &[u8]) {
        match Control::decode(bytes, self.shards) {
            Ok(Control::HandedOff(crate::envelope::HandedOff {
                from,
                version,
                shards,
            })) => {
                let current = self
                    .table
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .version;
                if version > current {
                    self.park(
                        ParkedKind::HandedOff {
                            from,
                            version,
                            shards,
                        },
                        None,
                        None,
                    );
                } else {
                    self.inbox.handed_off(&from, version, &shards);
                }
            }
            Err(error) => {
                Shared::add(&self.counters.bad_controls);
                tracing::warn!(node = %self.id, %error, "control message from a peer failed validation");
            }
        }
    }
}

/// What a failed envelope tells about its sender, when its archive is readable that far.
fn sender_of(bytes: &[u8]) -> Option<(u64, String, String, u16)> {
    if bytes.len() > MAX_ENVELOPE {
        return None;
    }
    let archived =
        rkyv::access::<crate::envelope::ArchivedEnvelope, rkyv::rancor::Error>(bytes).ok()?;
    let from = archived.from.as_str();
    if from.is_empty() || from.len() > MAX_NODE_ID {
        return None;
    }
    let mut kind = archived.kind.as_str().to_owned();
    if kind.len() > crate::envelope::MAX_KIND {
        kind.clear();
    }
    Some((
        archived.id.to_native(),
        from.to_owned(),
        kind,
        archived.shard.to_native(),
    ))
}

/// A peer's router, once the peer's session is up (tests use it to cast raw frames).
pub fn peer_router(node: &str) -> Option<ActorRef<RouterMsg>> {
    pg::get_members(&router_group(node))
        .into_iter()
        .find(|cell| !cell.get_id().is_local())
        .map(ActorRef::from)
}

struct Router {
    shared: Arc<Shared>,
}

impl Actor for Router {
    type Msg = RouterMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<(), ActorProcessingErr> {
        pg::join(router_group(&self.shared.id), vec![myself.get_cell()]);
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        message: Self::Msg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        // Never an error: a bad frame is refused and counted, the router goes on.
        match message {
            RouterMsg::Deliver(bytes) => self.shared.take(&bytes),
            RouterMsg::Refused(bytes) => self.shared.refused(&bytes),
            RouterMsg::Control(bytes) => {
                let _one = self
                    .shared
                    .taking
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                self.shared.control(&bytes);
            }
        }
        Ok(())
    }
}

/// Counts peer sessions that closed before they authenticated.
struct Sessions {
    shared: Arc<Shared>,
    pending: Mutex<HashSet<ActorId>>,
}

impl NodeEventSubscription for Sessions {
    fn node_session_opened(&self, session: NodeServerSessionInformation) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(session.actor.get_id());
    }

    fn node_session_disconnected(&self, session: NodeServerSessionInformation) {
        let was_pending = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&session.actor.get_id());
        if was_pending {
            Shared::add(&self.shared.counters.unauthenticated);
            tracing::warn!(
                node = %self.shared.id, peer = %session.peer_addr,
                "peer session closed before it authenticated"
            );
        }
    }

    fn node_session_authenticated(&self, session: NodeServerSessionInformation) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&session.actor.get_id());
    }
}

/// A running node: its node server, its router and its view of the shard table.
pub struct Node {
    shared: Arc<Shared>,
    server: ActorRef<NodeServerMessage>,
    router: ActorRef<RouterMsg>,
    addr: SocketAddr,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.shared.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts the node server on `config.listen:config.port` and the router, with the shard
    /// table this node routes by. Messages for this node's shards go to `inbox`.
    pub async fn start(
        config: NodeConfig,
        table: Table,
        inbox: impl Inbox,
    ) -> Result<Node, StartError> {
        if config.id.is_empty() || config.id.len() > MAX_NODE_ID {
            return Err(StartError::Id(config.id));
        }
        check_shards(&table, config.shards)?;
        inbox.table_changed(&config.id, &table);
        let shared = Arc::new(Shared {
            id: config.id.clone(),
            shards: config.shards,
            table: RwLock::new(table),
            inbox: Box::new(inbox),
            dead_letters: Mutex::new(None),
            counters: Counters::default(),
            next_id: AtomicU64::new(1),
            parked: Mutex::new(std::collections::VecDeque::new()),
            parked_len: AtomicUsize::new(0),
            taking: Mutex::new(()),
        });
        let (server, addr) = spawn_server(&config).await?;
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "garrison.sessions".into(),
                subscription: Box::new(Sessions {
                    shared: shared.clone(),
                    pending: Mutex::new(HashSet::new()),
                }),
            })
            .map_err(|error| StartError::Spawn(error.to_string()))?;
        let (router, _) = Actor::spawn(
            None,
            Router {
                shared: shared.clone(),
            },
            (),
        )
        .await
        .map_err(|error| StartError::Spawn(error.to_string()))?;
        // Parked envelopes time out even when no table comes: a second's sweep, while the node
        // lives.
        let sweeping = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                let Some(shared) = sweeping.upgrade() else {
                    return;
                };
                if shared.parked_len.load(Ordering::Acquire) > 0 {
                    shared.unpark();
                }
            }
        });
        Ok(Node {
            shared,
            server,
            router,
            addr,
        })
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The address peers connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connects to the peer `peer` at `addr` and waits, up to `wait`, until its router is
    /// reachable: the session authenticated both ways and the process groups synchronised.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        peer: &str,
        wait: Duration,
    ) -> Result<(), ConnectError> {
        ractor_cluster::client_connect(&self.server, addr)
            .await
            .map_err(|error| ConnectError::Connect {
                addr,
                detail: error.to_string(),
            })?;
        let deadline = tokio::time::Instant::now() + wait;
        while !self.reaches(peer) {
            if tokio::time::Instant::now() >= deadline {
                return Err(ConnectError::NotAuthenticated {
                    peer: peer.to_owned(),
                    addr,
                    waited: wait,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Whether this node has a live session to `peer`'s router.
    pub fn reaches(&self, peer: &str) -> bool {
        peer_router(peer).is_some()
    }

    /// Routes one message for the entity `key` of `kind` by this node's table: to the inbox if
    /// this node owns the key's shard, else to the owner's router.
    pub fn send(
        &self,
        kind: &str,
        key: &[u8],
        payload: &[u8],
        trace: Option<&TraceContext>,
    ) -> Result<Route, SendError> {
        let shard = shard_of(kind, key, self.shared.shards);
        let (owner, token) = {
            let table = self
                .shared
                .table
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let (owner, token) = table.owner(shard).ok_or(SendError::NoOwner(shard))?;
            (owner.to_owned(), token)
        };
        if owner == self.shared.id {
            self.shared
                .inbox
                .deliver(kind, key, payload, trace.copied())?;
            Shared::add(&self.shared.counters.local);
            return Ok(Route::Local);
        }
        self.cast(owner, kind, key, shard, token, payload, trace, false)
    }

    /// Sends one message to the entity `key` of `kind` on node `node` itself, whatever the
    /// table says: for kinds whose entities live where their player's session is (the node
    /// the player connected to), served there with the inbox's
    /// [`deliver_direct`](Inbox::deliver_direct). To this node, delivered at once.
    ///
    /// # Errors
    /// [`SendError::Unreachable`] when `node` is not connected, [`SendError::Envelope`] when
    /// the message does not fit an envelope, [`SendError::Refused`] from this node's inbox.
    pub fn send_to(
        &self,
        node: &str,
        kind: &str,
        key: &[u8],
        payload: &[u8],
        trace: Option<&TraceContext>,
    ) -> Result<Route, SendError> {
        if node == self.shared.id {
            self.shared
                .inbox
                .deliver_direct(kind, key, payload, trace.copied())?;
            Shared::add(&self.shared.counters.direct);
            return Ok(Route::Local);
        }
        let shard = shard_of(kind, key, self.shared.shards);
        self.cast(node.to_owned(), kind, key, shard, 0, payload, trace, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn cast(
        &self,
        owner: NodeId,
        kind: &str,
        key: &[u8],
        shard: ShardId,
        token: u64,
        payload: &[u8],
        trace: Option<&TraceContext>,
        direct: bool,
    ) -> Result<Route, SendError> {
        let router = peer_router(&owner).ok_or_else(|| SendError::Unreachable(owner.clone()))?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = Envelope {
            version: ENVELOPE_VERSION,
            id,
            from: self.shared.id.clone(),
            kind: kind.to_owned(),
            key: key.to_vec(),
            shard: shard.0,
            token,
            trace: trace_bytes(trace),
            payload: payload.to_vec(),
            hops: 0,
            direct,
        }
        .encode()?;
        router
            .cast(RouterMsg::Deliver(bytes))
            .map_err(|_| SendError::Unreachable(owner.clone()))?;
        Shared::add(&self.shared.counters.forwarded);
        Ok(Route::Forwarded { node: owner, id })
    }

    /// Tells peer `peer` a [`Control`] message (a hand-off), fire-and-forget like every cast
    /// between nodes.
    ///
    /// # Errors
    /// [`SendError::Unreachable`] when `peer` is not connected; [`SendError::Envelope`] when
    /// the message is too large.
    pub fn control(&self, peer: &str, control: &Control) -> Result<(), SendError> {
        let bytes = control.encode()?;
        let router = peer_router(peer).ok_or_else(|| SendError::Unreachable(peer.to_owned()))?;
        router
            .cast(RouterMsg::Control(bytes))
            .map_err(|_| SendError::Unreachable(peer.to_owned()))
    }

    /// Where this node's messages refused by a peer go (they are counted and logged in any
    /// case).
    pub fn on_dead_letter(&self, sink: impl Fn(DeadLetter) + Send + Sync + 'static) {
        *self
            .shared
            .dead_letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Box::new(sink));
    }

    /// Replaces the table this node routes and accepts by (a new version from the control
    /// plane). A table for another shard count is refused.
    pub fn set_table(&self, table: Table) -> Result<(), StartError> {
        check_shards(&table, self.shared.shards)?;
        // Told under the lock, so tables set from two threads reach the inbox in the order
        // the node takes them.
        {
            let mut current = self
                .shared
                .table
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.inbox.table_changed(&self.shared.id, &table);
            *current = table;
        }
        // What was routed by this table (or an older one) before it arrived is taken now.
        self.shared.unpark();
        Ok(())
    }

    /// The node that owns the entity `key` of `kind` by this node's table, with its token.
    pub fn owner_of(&self, kind: &str, key: &[u8]) -> Option<(NodeId, u64)> {
        let shard = shard_of(kind, key, self.shared.shards);
        self.shared
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .owner(shard)
            .map(|(node, token)| (node.to_owned(), token))
    }

    /// A copy of the table this node routes by.
    pub fn table(&self) -> Table {
        self.shared
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The node's counters.
    pub fn stats(&self) -> NodeStats {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        NodeStats {
            local: get(&c.local),
            forwarded: get(&c.forwarded),
            received: get(&c.received),
            refused: std::array::from_fn(|i| get(&c.refused[i])),
            dead_letters: get(&c.dead_letters),
            refusals_unsent: get(&c.refusals_unsent),
            bad_refusals: get(&c.bad_refusals),
            unauthenticated: get(&c.unauthenticated),
            relayed: get(&c.relayed),
            parked: get(&c.parked),
            direct: get(&c.direct),
            bad_controls: get(&c.bad_controls),
        }
    }

    /// Stops the router and the node server; peers see the session close.
    pub async fn stop(&self) {
        let _ = self
            .router
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        let _ = self
            .server
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
    }
}

fn check_shards(table: &Table, shards: u16) -> Result<(), StartError> {
    if table.shards.len() != usize::from(shards) {
        return Err(StartError::Shards {
            table: table.shards.len(),
            node: shards,
        });
    }
    Ok(())
}

async fn spawn_server(
    config: &NodeConfig,
) -> Result<(ActorRef<NodeServerMessage>, SocketAddr), StartError> {
    // ractor_cluster binds port 0 without telling which port it got: pick a free port first,
    // and try again if another process takes it in between.
    let attempts = if config.port == 0 { 3 } else { 1 };
    let mut last = String::new();
    for _ in 0..attempts {
        let port = if config.port == 0 {
            std::net::TcpListener::bind((config.listen, 0))
                .and_then(|listener| listener.local_addr())
                .map_err(|error| StartError::Spawn(error.to_string()))?
                .port()
        } else {
            config.port
        };
        let server = NodeServer::new(
            port,
            config.cookie.clone(),
            config.id.clone(),
            config.listen.to_string(),
            None,
            None,
        )
        .with_listen_addr(config.listen)
        .with_max_inbound_frame_size(MAX_FRAME);
        match Actor::spawn(None, server, ()).await {
            Ok((server, _)) => return Ok((server, SocketAddr::new(config.listen, port))),
            Err(error) => last = error.to_string(),
        }
    }
    Err(StartError::Spawn(last))
}
