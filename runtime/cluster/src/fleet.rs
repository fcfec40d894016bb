//! Runtime entities on a fleet (feature `nodes`): an entity kind served on a [`Node`] is
//! addressed by key from any node, and its messages reach the incarnation on the node that owns
//! the key's shard.
//!
//! A kind travels as one protocol message type `M` (an rkyv archive, [`Message`]): the sender
//! encodes it once into a frame, the owner validates the frame once on receipt
//! ([`Frame::decode_exact`], then [`Frame::validate`]) and hands the game a [`Validated<M>`] that
//! reads in place, wrapped into the kind's own message by the function given to
//! [`Kinds::serve`]. The key travels as its text (`Display`) and is parsed back (`FromStr`).
//!
//! The same path serves a key whose shard is this node's ([`Route::Local`]: no network, the
//! same validation) and a key on a peer ([`Route::Forwarded`]); a refusal on the owner (a full
//! mailbox, an unparsable key or payload) comes back as the peer's [`DeadLetter`].
//!
//! When the table moves a shard, [`Kinds`] moves its entities with it, one of two ways:
//! - **hand-off** (the old owner still stands in the fleet: a drain, a newcomer's share): the
//!   old owner's entities on the shard handle what was queued for them, write their state
//!   through and leave ([`Entities::hand_off`]), what was queued behind is sent on to the new
//!   owner, and the old owner tells the new one [`Control::HandedOff`]. Until then the new
//!   owner keeps every message for the shard in a bounded buffer and activates nothing of it;
//!   then it runs them first and in order. No accepted message is lost, and no entity runs on
//!   both. The node waited on is the one the table names ([`Assignment::from`]), and until
//!   the fleet's members are known it counts as standing; a shard that moves on again before
//!   its hand-off came is told on to its newer owner when that hand-off arrives.
//!
//! [`Assignment::from`]: crate::placement::Assignment::from
//! - **release** (the old owner is gone: killed, or its lease lapsed): nobody can hand
//!   anything over. The old owner, if it still runs, forgets its entities (their queues
//!   dead-lettered); the new owner runs them from the store at once.
//!
//! Kinds whose entities must run without a message ([`Serving::run_on_arrival`]: a room's
//! clock) are started from the store on every shard the node gains.
//!
//! [`DeadLetter`]: crate::node::DeadLetter

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use garrison_protocol::{
    DecodeConfig, Frame, FrameMeta, Message, MessageKind, TraceContext, Validated,
};
use garrison_runtime::{DepartureKind, Entities, Entity, HandOffReport, Lease};

use crate::envelope::{Control, HandedOff, MAX_ENVELOPE};
use crate::node::{Inbox, InboxRefusal, Node, Route, SendError};
use crate::placement::Table;
use crate::shard::shard_of;

/// Messages a node keeps, over all shards, for shards it waits to be handed; past it, a message
/// for one is refused as busy (dead-lettered at its sender).
pub const MAX_BUFFERED: usize = 65_536;
/// How long a node waits for a shard's hand-off before it runs the shard's entities from the
/// store anyway (the old owner hung, or its `HandedOff` was lost): a bound on a drain's pause,
/// far above a hand-off's usual few milliseconds.
pub const HANDOFF_WAIT: Duration = Duration::from_secs(10);
/// How long an old owner's entities have to hand themselves off.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);

type Deliver = dyn Fn(&[u8], &[u8]) -> Result<(), InboxRefusal> + Send + Sync;
/// Lets go of a kind's entities on the shards marked lost, with a reason; returns how many.
type Release = dyn Fn(&[bool], &str) -> usize + Send + Sync;
type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// Hands a kind's entities on the shards marked lost to their new owners through the node.
type HandOff = dyn Fn(Arc<[bool]>, Arc<Node>) -> Boxed<HandOffReport> + Send + Sync;
/// Runs a kind's stored entities on the shards marked gained; returns how many.
type Recover = dyn Fn(Arc<[bool]>) -> Boxed<usize> + Send + Sync;

/// One kind served to the fleet.
#[derive(Clone)]
struct Served {
    deliver: Arc<Deliver>,
    /// Served by node ([`Kinds::serve_here`]): reached with [`Node::send_to`], not by shard.
    here: bool,
    release: Arc<Release>,
    hand_off: Option<Arc<HandOff>>,
    recover: Option<Arc<Recover>>,
}

/// Turns a kind's queued message back into its wire message ([`Serving::portable`]).
pub type Portable<E, M> = dyn Fn(<E as Entity>::Message) -> Option<M> + Send + Sync;

/// How a kind is served to its fleet, beyond its wire message ([`Kinds::serve_with`]).
pub struct Serving<E: Entity, M> {
    /// Turns a message still queued for an entity that is handed off back into the kind's wire
    /// message, to send it on to the new owner; `None` for a message that cannot leave its
    /// node (it is dead-lettered with the reason). Without it, every queued message is.
    pub portable: Option<Box<Portable<E, M>>>,
    /// Every stored entity of a shard the node gains is started from the store at once
    /// ([`Entities::recover_stored_where`]), not at its first message: for entities that run
    /// on their own (a room's clock).
    pub run_on_arrival: bool,
}

impl<E: Entity, M> Default for Serving<E, M> {
    fn default() -> Self {
        Serving {
            portable: None,
            run_on_arrival: false,
        }
    }
}

/// A message kept for a shard the node waits to be handed.
struct Buffered {
    kind: String,
    key: Vec<u8>,
    payload: Vec<u8>,
    trace: Option<TraceContext>,
}

/// A shard the table gave this node while its old owner still stands: waiting for its
/// `HandedOff`, with what came for it meanwhile.
struct Incoming {
    from: String,
    since: Instant,
    queue: VecDeque<Buffered>,
    /// Handed over: its queue is being delivered, one message at a time, and what comes for
    /// the shard meanwhile still queues behind it, so the entities get everything in order.
    draining: bool,
}

/// A shard this node lost while it still waited for it to be handed over: it never ran here,
/// so its new owner's hand-off must come from the node this one waited on. Told on when that
/// node's `HandedOff` comes here, when that node leaves the fleet, or after [`HANDOFF_WAIT`].
struct Forward {
    /// The node this one waited on.
    from: String,
    /// The shard's new owner, waiting on this node.
    to: String,
    /// The table version that gave it to `to`.
    version: u64,
    since: Instant,
}

/// The node the kinds are served on and its shards, as its [`Inbox`] was last told.
#[derive(Default)]
struct Acting {
    node: String,
    table: Option<Arc<Table>>,
    /// The fleet's live nodes, as last told ([`Kinds::members_changed`]); `None` until then (an
    /// old owner then counts as standing: its shards wait for its hand-off, or for
    /// [`HANDOFF_WAIT`]).
    members: Option<BTreeSet<String>>,
    /// Whether the node stands in its fleet ([`Kinds::set_member`]): only then does it hand
    /// off what it loses (a node whose lease is gone has nothing it may still hand over).
    member: bool,
    incoming: HashMap<u16, Incoming>,
    forwarding: HashMap<u16, Forward>,
    buffered: usize,
}

impl Acting {
    /// The shards still waiting for a hand-off (not draining one already) that `due` picks.
    fn waiting(&self, due: impl Fn(&Incoming) -> bool) -> Vec<u16> {
        self.incoming
            .iter()
            .filter(|(_, incoming)| !incoming.draining && due(incoming))
            .map(|(shard, _)| *shard)
            .collect()
    }

    fn shards(&self) -> u16 {
        self.table.as_ref().map_or(0, |table| {
            u16::try_from(table.shards.len()).unwrap_or(u16::MAX)
        })
    }

    /// The fencing token this node holds for `key` of `kind`: its shard's, if the node owns it
    /// and is not still waiting for it to be handed over; else `None` (no activation here).
    fn token(&self, kind: &str, key: &[u8]) -> Option<(u16, u64)> {
        let table = self.table.as_ref()?;
        let shard = shard_of(kind, key, self.shards());
        let waiting = self
            .incoming
            .get(&shard.0)
            .is_some_and(|incoming| !incoming.draining);
        match table.owner(shard) {
            Some((owner, token)) if owner == self.node && !waiting => Some((shard.0, token)),
            _ => None,
        }
    }
}

/// One line of a node's activation log: an entity began or stopped running here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationRecord {
    /// The node.
    pub node: String,
    /// The entity kind.
    pub kind: &'static str,
    /// The entity key, as text.
    pub key: String,
    /// The key's shard.
    pub shard: u16,
    /// The fencing token (store generation) of the activation.
    pub token: u64,
    /// What happened.
    pub event: ActivationEvent,
}

/// What an [`ActivationRecord`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationEvent {
    /// It activated here, at this instant (milliseconds since the Unix epoch).
    Activated {
        /// When.
        at_unix_ms: u64,
    },
    /// It left this node: no handling of it began here after `last_handled_unix_ms` (see
    /// [`Departure`](garrison_runtime::Departure)).
    Departed {
        /// How it left.
        how: DepartureKind,
        /// When the last message it handled here began (milliseconds since the Unix epoch).
        last_handled_unix_ms: u64,
    },
}

impl std::fmt::Display for ActivationRecord {
    /// One line: `node kind key shard token activated AT` or `node kind key shard token HOW
    /// LAST_HANDLED` (milliseconds since the Unix epoch; `HOW` is a [`DepartureKind`]'s label).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, at) = match self.event {
            ActivationEvent::Activated { at_unix_ms } => ("activated", at_unix_ms),
            ActivationEvent::Departed {
                how,
                last_handled_unix_ms,
            } => (how.as_str(), last_handled_unix_ms),
        };
        write!(
            f,
            "{} {} {} {} {} {what} {at}",
            self.node, self.kind, self.key, self.shard, self.token
        )
    }
}

impl ActivationRecord {
    /// Reads a line written by [`ActivationRecord`]'s `Display`. The kind is given back as
    /// `kinds` names it (the log names kinds by their `KIND`).
    ///
    /// # Errors
    /// What is wrong with the line.
    pub fn parse(line: &str, kinds: &[&'static str]) -> Result<ActivationRecord, String> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [node, kind, key, shard, token, what, at] = fields[..] else {
            return Err(format!("not an activation record: {line:?}"));
        };
        let kind = kinds
            .iter()
            .copied()
            .find(|known| *known == kind)
            .ok_or_else(|| format!("unknown kind {kind:?} in {line:?}"))?;
        let number = |field: &str| {
            field
                .parse::<u64>()
                .map_err(|error| format!("{field:?} in {line:?}: {error}"))
        };
        let at = number(at)?;
        let how = match what {
            "activated" => None,
            "handed_off" => Some(DepartureKind::HandedOff),
            "released" => Some(DepartureKind::Released),
            "lapsed" => Some(DepartureKind::Lapsed),
            "passivated" => Some(DepartureKind::Passivated),
            "stopped" => Some(DepartureKind::Stopped),
            other => return Err(format!("unknown event {other:?} in {line:?}")),
        };
        Ok(ActivationRecord {
            node: node.to_owned(),
            kind,
            key: key.to_owned(),
            shard: u16::try_from(number(shard)?).map_err(|error| error.to_string())?,
            token: number(token)?,
            event: match how {
                None => ActivationEvent::Activated { at_unix_ms: at },
                Some(how) => ActivationEvent::Departed {
                    how,
                    last_handled_unix_ms: at,
                },
            },
        })
    }
}

/// What [`check_activations`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivationCheck {
    /// Entities that ran on more than one node (they moved).
    pub moved: usize,
    /// Runs checked (an activation and its departure, or its node's end).
    pub runs: usize,
}

/// Checks that no entity ran on two nodes at once, from the activation logs of a fleet's
/// nodes: per entity, each node's runs (from an activation to the last message its departure
/// reports; a run without a departure lasts until the first instant in `deaths[node]` after it
/// began, when that node was killed, or until the same node activates it again, or for ever)
/// must not overlap another node's, and a later run on another node must hold a higher fencing
/// token.
///
/// # Errors
/// The first overlap found, described.
pub fn check_activations(
    records: &[ActivationRecord],
    deaths: &HashMap<String, Vec<u64>>,
) -> Result<ActivationCheck, String> {
    type Run<'a> = (u64, u64, &'a str, u64);
    let mut runs: BTreeMap<(&str, &str), Vec<Run<'_>>> = BTreeMap::new();
    let mut open: HashMap<(&str, &str, &str), (u64, u64)> = HashMap::new();
    let mut sorted: Vec<&ActivationRecord> = records.iter().collect();
    sorted.sort_by_key(|record| match record.event {
        ActivationEvent::Activated { at_unix_ms } => at_unix_ms,
        ActivationEvent::Departed {
            last_handled_unix_ms,
            ..
        } => last_handled_unix_ms,
    });
    for record in sorted {
        let at = (record.node.as_str(), record.kind, record.key.as_str());
        match record.event {
            ActivationEvent::Activated { at_unix_ms } => {
                // Activated again on the same node with no departure logged between: the
                // earlier run ended by then (one incarnation per key per process), at the
                // node's death if it died meanwhile (a restart writing on the same log).
                if let Some((from, token)) = open.insert(at, (at_unix_ms, record.token)) {
                    let until = deaths
                        .get(at.0)
                        .and_then(|deaths| {
                            deaths
                                .iter()
                                .copied()
                                .filter(|death| (from..=at_unix_ms).contains(death))
                                .min()
                        })
                        .unwrap_or(at_unix_ms);
                    runs.entry((at.1, at.2))
                        .or_default()
                        .push((from, until, at.0, token));
                }
            }
            ActivationEvent::Departed {
                last_handled_unix_ms,
                ..
            } => {
                if let Some((from, token)) = open.remove(&at) {
                    runs.entry((at.1, at.2)).or_default().push((
                        from,
                        last_handled_unix_ms,
                        at.0,
                        token,
                    ));
                }
            }
        }
    }
    for ((node, kind, key), (from, token)) in open {
        let until = deaths
            .get(node)
            .and_then(|deaths| deaths.iter().copied().filter(|at| *at >= from).min())
            .unwrap_or(u64::MAX);
        runs.entry((kind, key))
            .or_default()
            .push((from, until, node, token));
    }
    let mut check = ActivationCheck::default();
    for ((kind, key), mut spans) in runs {
        spans.sort();
        check.runs += spans.len();
        let nodes: BTreeSet<&str> = spans.iter().map(|span| span.2).collect();
        check.moved += usize::from(nodes.len() > 1);
        for pair in spans.windows(2) {
            let (first, second) = (pair[0], pair[1]);
            if first.2 == second.2 {
                continue;
            }
            if first.1 > second.0 {
                return Err(format!(
                    "{kind} {key} ran on {} (token {}, until {}) and on {} (token {}, from {}) at once",
                    first.2, first.3, first.1, second.2, second.3, second.0
                ));
            }
            if second.3 <= first.3 {
                return Err(format!(
                    "{kind} {key}: its run on {} holds token {}, not above {}'s {}",
                    second.2, second.3, first.2, first.3
                ));
            }
        }
    }
    Ok(check)
}

type LogSink = dyn Fn(ActivationRecord) + Send + Sync;

#[derive(Default)]
struct Counters {
    released: AtomicU64,
    handed_off: AtomicU64,
    handoffs: AtomicU64,
    forwarded: AtomicU64,
    unconfirmed: AtomicU64,
    recovered: AtomicU64,
    arrivals: AtomicU64,
    buffered: AtomicU64,
    buffer_refused: AtomicU64,
    undeliverable: AtomicU64,
    waits_expired: AtomicU64,
    /// The last hand-off's duration, from the table change to the `HandedOff` sent, in µs.
    last_handoff_us: AtomicU64,
    /// Hand-offs under way.
    handing: AtomicU64,
}

/// What a node's [`Kinds`] did with its shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindsStats {
    /// Entities released because their shards left the node with nobody to hand them to.
    pub released: u64,
    /// Entities handed off to their shards' new owners.
    pub handed_off: u64,
    /// Hand-offs done (one per table change that moved shards to live peers).
    pub handoffs: u64,
    /// Messages queued for entities handed off, sent on to the new owners.
    pub forwarded: u64,
    /// Entities whose last state was not confirmed, or that did not hand off in time.
    pub unconfirmed: u64,
    /// Stored entities started on shards the node gained.
    pub recovered: u64,
    /// Shards that became runnable here (handed over, or taken from a node that is gone).
    pub arrivals: u64,
    /// Messages kept for shards waiting to be handed over, so far.
    pub buffered: u64,
    /// Messages refused because the hand-off buffer was full.
    pub buffer_refused: u64,
    /// Buffered messages their entity refused when the shard became runnable (logged).
    pub undeliverable: u64,
    /// Shards run from the store after waiting [`HANDOFF_WAIT`] for a hand-off.
    pub waits_expired: u64,
    /// The last hand-off's duration, from the table change to its `HandedOff`.
    pub last_handoff: Duration,
    /// Shards waiting for a hand-off now.
    pub incoming: usize,
    /// Shards this node lost while it waited for them: their new owners wait on this node to
    /// tell on the hand-off it waited for.
    pub forwarding: usize,
    /// Hand-offs this node is doing now (its entities on the way out).
    pub handing: u64,
}

struct Inner {
    kinds: RwLock<HashMap<&'static str, Served>>,
    acting: RwLock<Acting>,
    lease: Lease,
    node: OnceLock<Weak<Node>>,
    log: OnceLock<Arc<LogSink>>,
    counters: Counters,
}

/// The entity kinds a node serves to its fleet: the node's [`Inbox`]. Give a clone to
/// [`Node::start`], [`attach`](Kinds::attach) the node, and [`serve`](Kinds::serve) kinds on
/// it, before or after the node starts.
///
/// It keeps the kinds' entities on the shards the node owns, as the node's table says:
/// - each activation's writes carry the fencing token of its key's shard in the table the node
///   acts on when it activates ([`Entities::fence_by`]); a key whose shard the node does not
///   own (or waits to be handed) is not activated here at all. An activation that outlives the
///   node's ownership keeps its old token, so once the shard's new owner has written with the
///   newer token, the old one's writes are refused;
/// - every sharded kind is under the node's [`Lease`] ([`Kinds::lease`]): past it, nothing of
///   them is handled here;
/// - when a table moves shards, their entities are handed off or released (see the module
///   documentation), and the shards the node gains wait for their hand-off when their old owner
///   still stands.
#[derive(Clone)]
pub struct Kinds {
    inner: Arc<Inner>,
}

impl Default for Kinds {
    fn default() -> Self {
        Kinds::new()
    }
}

impl std::fmt::Debug for Kinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds = self
            .inner
            .kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f.debug_set().entries(kinds.keys()).finish()
    }
}

/// Only frames of `M`'s kind are decoded for `M`.
fn is_kind<M: Message>(kind: MessageKind) -> bool {
    kind == M::KIND
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Decodes, validates and delivers one frame of `M` to `entities`, wrapped.
fn deliver_to<E, M>(
    entities: &Entities<E>,
    wrap: &(impl Fn(Validated<M>) -> E::Message + Send + Sync),
    key: &[u8],
    payload: &[u8],
) -> Result<(), InboxRefusal>
where
    E: Entity,
    E::Key: FromStr,
    M: Message,
{
    let config = DecodeConfig {
        max_frame_len: MAX_ENVELOPE,
        known_kind: is_kind::<M>,
    };
    let key = std::str::from_utf8(key)
        .ok()
        .and_then(|text| text.parse::<E::Key>().ok())
        .ok_or_else(|| {
            InboxRefusal::Rejected(format!(
                "the key ({} bytes) is not a {} key",
                key.len(),
                E::KIND
            ))
        })?;
    let message = Frame::decode_exact(Bytes::copy_from_slice(payload), &config)
        .and_then(Frame::validate::<M>)
        .map_err(|error| {
            InboxRefusal::Rejected(format!("not a valid {} for {}: {error}", M::NAME, E::KIND))
        })?;
    // Sent from inside a traced span on its node: handled here in that trace.
    let span =
        garrison_runtime::telemetry::remote_span(M::NAME, message.frame().header().trace.as_ref());
    let _entered = span.enter();
    entities
        .send(&key, wrap(message))
        .map_err(|refused| InboxRefusal::Rejected(refused.reason.to_string()))
}

impl Kinds {
    /// No kinds yet.
    pub fn new() -> Self {
        Kinds {
            inner: Arc::new(Inner {
                kinds: RwLock::default(),
                acting: RwLock::default(),
                lease: Lease::new(),
                node: OnceLock::new(),
                log: OnceLock::new(),
                counters: Counters::default(),
            }),
        }
    }

    /// Gives the kinds the node they are served on (after [`Node::start`]): a hand-off sends
    /// what was queued on, and its `HandedOff`, through it. The first node stays.
    pub fn attach(&self, node: &Arc<Node>) {
        let _ = self.inner.node.set(Arc::downgrade(node));
    }

    /// The node's lease every sharded kind is under: renewed by the fleet member
    /// (`member::run`), revoked when the lease is gone. Holds forever until renewed with a
    /// deadline (a node without a fleet).
    pub fn lease(&self) -> &Lease {
        &self.inner.lease
    }

    /// Sends every [`ActivationRecord`] (an entity of a sharded kind activated here, or left)
    /// to `sink`. The first sink stays. The sink runs where the entity activates or leaves,
    /// with its registry entry held, and may run inside a table change: keep it short (a
    /// buffered write, a channel), and never call back into the node from it.
    pub fn activation_log(&self, sink: impl Fn(ActivationRecord) + Send + Sync + 'static) {
        let _ = self.inner.log.set(Arc::new(sink));
    }

    /// Serves `entities` to the fleet: a message for one of its keys, sent from any node as an
    /// `M`, is validated here and delivered as `wrap(message)`. Serving a kind again replaces
    /// the previous entry.
    pub fn serve<E, M>(
        &self,
        entities: Entities<E>,
        wrap: impl Fn(Validated<M>) -> E::Message + Send + Sync + 'static,
    ) where
        E: Entity,
        E::Key: FromStr,
        M: Message,
    {
        self.serve_with(entities, wrap, Serving::default());
    }

    /// As [`Kinds::serve`], with how the kind's entities move between nodes ([`Serving`]).
    pub fn serve_with<E, M>(
        &self,
        entities: Entities<E>,
        wrap: impl Fn(Validated<M>) -> E::Message + Send + Sync + 'static,
        serving: Serving<E, M>,
    ) where
        E: Entity,
        E::Key: FromStr,
        M: Message,
    {
        let releasing = entities.clone();
        let release = move |lost: &[bool], reason: &str| {
            let shards = u16::try_from(lost.len()).unwrap_or(u16::MAX);
            releasing.release(
                |key| {
                    let shard = shard_of(E::KIND, key.to_string().as_bytes(), shards);
                    lost.get(usize::from(shard.0)).copied().unwrap_or(false)
                },
                reason,
            )
        };
        let fencing = Arc::downgrade(&self.inner);
        entities.fence_by(move |key: &E::Key| {
            let inner = fencing.upgrade()?;
            if !inner.lease.is_valid() {
                return None;
            }
            let text = key.to_string();
            let (node, (shard, token)) = {
                let acting = inner.acting();
                (acting.node.clone(), acting.token(E::KIND, text.as_bytes())?)
            };
            inner.record(ActivationRecord {
                node,
                kind: E::KIND,
                key: text,
                shard,
                token,
                event: ActivationEvent::Activated {
                    at_unix_ms: unix_ms(),
                },
            });
            Some(token)
        });
        entities.lease(self.inner.lease.clone());
        let logging = Arc::downgrade(&self.inner);
        entities.on_departure(move |key, departure| {
            let Some(inner) = logging.upgrade() else {
                return;
            };
            let text = key.to_string();
            let (node, shards) = {
                let acting = inner.acting();
                (acting.node.clone(), acting.shards())
            };
            inner.record(ActivationRecord {
                node,
                kind: E::KIND,
                shard: shard_of(E::KIND, text.as_bytes(), shards.max(1)).0,
                key: text,
                token: departure.generation.unwrap_or(0),
                event: ActivationEvent::Departed {
                    how: departure.kind,
                    last_handled_unix_ms: departure.last_handled_unix_ms,
                },
            });
        });
        let portable = serving.portable.map(Arc::new);
        let handing = entities.clone();
        let hand_off = move |lost: Arc<[bool]>, node: Arc<Node>| -> Boxed<HandOffReport> {
            let entities = handing.clone();
            let portable = portable.clone();
            Box::pin(async move {
                let shards = u16::try_from(lost.len()).unwrap_or(u16::MAX);
                let which = move |key: &E::Key| {
                    let shard = shard_of(E::KIND, key.to_string().as_bytes(), shards);
                    lost.get(usize::from(shard.0)).copied().unwrap_or(false)
                };
                let forward = move |key: &E::Key, message: E::Message| {
                    let Some(portable) = &portable else {
                        return Err(format!("{} messages cannot leave their node", E::KIND));
                    };
                    let wire = portable(message)
                        .ok_or_else(|| format!("the {} message cannot leave its node", E::KIND))?;
                    let frame = garrison_protocol::encode_frame(&wire, FrameMeta::default())
                        .map_err(|error| format!("it did not encode: {error}"))?;
                    node.send(E::KIND, key.to_string().as_bytes(), frame.wire(), None)
                        .map(|_| ())
                        .map_err(|error| error.to_string())
                };
                entities.hand_off(which, forward, HANDOFF_TIMEOUT).await
            })
        };
        let recover = serving.run_on_arrival.then(|| {
            let recovering = entities.clone();
            Arc::new(move |gained: Arc<[bool]>| -> Boxed<usize> {
                let entities = recovering.clone();
                Box::pin(async move {
                    let shards = u16::try_from(gained.len()).unwrap_or(u16::MAX);
                    let which = |key: &E::Key| {
                        let shard = shard_of(E::KIND, key.to_string().as_bytes(), shards);
                        gained.get(usize::from(shard.0)).copied().unwrap_or(false)
                    };
                    match entities.recover_stored_where(which).await {
                        Ok(woken) => woken,
                        Err(error) => {
                            tracing::error!(
                                kind = E::KIND,
                                %error,
                                "the entities of the shards gained could not be listed in the store"
                            );
                            0
                        }
                    }
                })
            }) as Arc<Recover>
        });
        let deliver = move |key: &[u8], payload: &[u8]| deliver_to(&entities, &wrap, key, payload);
        self.inner
            .kinds
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                E::KIND,
                Served {
                    deliver: Arc::new(deliver),
                    here: false,
                    release: Arc::new(release),
                    hand_off: Some(Arc::new(hand_off)),
                    recover,
                },
            );
    }

    /// Serves `entities` by node rather than by shard: its entities live where their player's
    /// session is (the node the player connected to), reached from other nodes with
    /// [`Node::send_to`] naming that node; no shard, token or hand-off applies to them, but the
    /// node's [`Lease`] does.
    pub fn serve_here<E, M>(
        &self,
        entities: Entities<E>,
        wrap: impl Fn(Validated<M>) -> E::Message + Send + Sync + 'static,
    ) where
        E: Entity,
        E::Key: FromStr,
        M: Message,
    {
        // A node whose lease lapsed acts for its players no more either: they went to other
        // nodes, and what its stale sessions would do for them (leave their rooms) must not
        // happen.
        entities.lease(self.inner.lease.clone());
        let deliver = move |key: &[u8], payload: &[u8]| deliver_to(&entities, &wrap, key, payload);
        self.inner
            .kinds
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                E::KIND,
                Served {
                    deliver: Arc::new(deliver),
                    here: true,
                    release: Arc::new(|_: &[bool], _: &str| 0),
                    hand_off: None,
                    recover: None,
                },
            );
    }

    /// Entities released so far because their shards left this node with nobody to hand them
    /// to.
    pub fn released(&self) -> u64 {
        self.inner.counters.released.load(Ordering::Relaxed)
    }

    /// What the kinds did with their shards so far.
    pub fn stats(&self) -> KindsStats {
        let c = &self.inner.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let acting = self.inner.acting();
        KindsStats {
            released: get(&c.released),
            handed_off: get(&c.handed_off),
            handoffs: get(&c.handoffs),
            forwarded: get(&c.forwarded),
            unconfirmed: get(&c.unconfirmed),
            recovered: get(&c.recovered),
            arrivals: get(&c.arrivals),
            buffered: get(&c.buffered),
            buffer_refused: get(&c.buffer_refused),
            undeliverable: get(&c.undeliverable),
            waits_expired: get(&c.waits_expired),
            last_handoff: Duration::from_micros(get(&c.last_handoff_us)),
            handing: get(&c.handing),
            incoming: acting.incoming.len(),
            forwarding: acting.forwarding.len(),
        }
    }

    /// Tells the kinds whether their node stands in its fleet (its lease holds): a node that
    /// stands hands off the shards it loses; one that does not releases them.
    pub fn set_member(&self, member: bool) {
        self.inner.acting_mut().member = member;
    }

    /// Tells the kinds the fleet's live nodes: a shard waiting to be handed by a node that is
    /// no longer among them runs from the store now.
    pub fn members_changed(&self, members: BTreeSet<String>) {
        let (me, gone, forwards) = {
            let mut acting = self.inner.acting_mut();
            let gone = acting.waiting(|incoming| !members.contains(&incoming.from));
            let forwards = take_forwards(&mut acting, |forward| !members.contains(&forward.from));
            acting.members = Some(members);
            (acting.node.clone(), gone, forwards)
        };
        self.inner.tell_forwards(&me, forwards, "left the fleet");
        if !gone.is_empty() {
            tracing::warn!(
                shards = gone.len(),
                "the node handing shards over left the fleet: they run from the store"
            );
            self.inner.arrive(&gone);
        }
    }

    /// Runs from the store the shards that waited [`HANDOFF_WAIT`] for a hand-off (and tells
    /// on the waits of shards this node lost meanwhile). The fleet member calls it every
    /// second.
    pub fn sweep(&self) {
        let (me, expired, forwards) = {
            let mut acting = self.inner.acting_mut();
            let expired = acting.waiting(|incoming| incoming.since.elapsed() >= HANDOFF_WAIT);
            let forwards = take_forwards(&mut acting, |forward| {
                forward.since.elapsed() >= HANDOFF_WAIT
            });
            (acting.node.clone(), expired, forwards)
        };
        self.inner
            .tell_forwards(&me, forwards, &format!("waited {HANDOFF_WAIT:?}"));
        if !expired.is_empty() {
            self.inner
                .counters
                .waits_expired
                .fetch_add(expired.len() as u64, Ordering::Relaxed);
            tracing::warn!(
                shards = expired.len(),
                "no hand-off came within {HANDOFF_WAIT:?}: the shards run from the store"
            );
            self.inner.arrive(&expired);
        }
    }
}

/// Tells `peer` a hand-off, waiting for the peer to be reached until `until` (a node that just
/// joined is connected to after the table that gave it shards): past it, the new owner runs
/// the shards after its own wait.
async fn tell(node: &Node, peer: &str, control: &Control, until: Instant) {
    loop {
        match node.control(peer, control) {
            Ok(()) => return,
            Err(SendError::Unreachable(_)) if Instant::now() < until => {
                // Polled: a session comes up within the fleet's connect wait; there is no
                // event to wait on across every way it can come up.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => {
                tracing::warn!(
                    node = node.id(), %peer, %error,
                    "a hand-off could not be told: the new owner runs the shards after \
                     {HANDOFF_WAIT:?}"
                );
                return;
            }
        }
    }
}

/// Takes the forwards `done` says are due.
fn take_forwards(acting: &mut Acting, done: impl Fn(&Forward) -> bool) -> Vec<(u16, Forward)> {
    acting
        .forwarding
        .extract_if(|_, forward| done(forward))
        .collect()
}

impl Inner {
    /// What the kinds act on, to read (a poisoned lock only means a panic elsewhere while it
    /// was held: the state is still consistent between statements).
    fn acting(&self) -> std::sync::RwLockReadGuard<'_, Acting> {
        self.acting.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the kinds act on, to change.
    fn acting_mut(&self) -> std::sync::RwLockWriteGuard<'_, Acting> {
        self.acting.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, record: ActivationRecord) {
        if let Some(sink) = self.log.get() {
            sink(record);
        }
    }

    fn served(&self) -> Vec<Served> {
        self.kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn served_kind(&self, kind: &str) -> Result<Served, InboxRefusal> {
        self.kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(kind)
            .cloned()
            .ok_or_else(|| InboxRefusal::UnknownKind(kind.to_owned()))
    }

    /// `shards` may run here now: what was kept for them is delivered in order, and the kinds
    /// that run on their own start their stored entities there.
    fn arrive(self: &Arc<Self>, shards: &[u16]) {
        let (draining, size) = {
            let mut acting = self.acting_mut();
            let size = usize::from(acting.shards());
            let mut draining = Vec::with_capacity(shards.len());
            for shard in shards {
                if let Some(incoming) = acting.incoming.get_mut(shard)
                    && !incoming.draining
                {
                    incoming.draining = true;
                    draining.push(*shard);
                }
            }
            (draining, size)
        };
        self.counters
            .arrivals
            .fetch_add(draining.len() as u64, Ordering::Relaxed);
        for &shard in &draining {
            self.drain(shard);
        }
        self.recover(&draining, size);
    }

    /// Delivers what was kept for `shard`, one message at a time, until its queue is empty (what
    /// comes for it meanwhile queues behind, so order holds); then the shard is the node's like
    /// any other. Stops if the shard moved on meanwhile (its queue was sent on).
    fn drain(&self, shard: u16) {
        loop {
            let buffered = {
                let mut acting = self.acting_mut();
                let Some(incoming) = acting.incoming.get_mut(&shard) else {
                    return;
                };
                match incoming.queue.pop_front() {
                    Some(buffered) => {
                        acting.buffered -= 1;
                        buffered
                    }
                    None => {
                        acting.incoming.remove(&shard);
                        return;
                    }
                }
            };
            let delivered = self
                .served_kind(&buffered.kind)
                .and_then(|served| (served.deliver)(&buffered.key, &buffered.payload));
            if let Err(error) = delivered {
                self.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    kind = %buffered.kind,
                    shard,
                    traced = buffered.trace.is_some(),
                    %error,
                    "a message kept for a shard's hand-off was refused by its entity: dropped"
                );
            }
        }
    }

    /// Tells each new owner waiting on this node for a shard it lost before it was handed it
    /// that the hand-off it waited for is done.
    fn tell_forwards(&self, me: &str, forwards: Vec<(u16, Forward)>, why: &str) {
        if forwards.is_empty() {
            return;
        }
        let Some(node) = self.node.get().and_then(Weak::upgrade) else {
            return;
        };
        let mut told: BTreeMap<(String, u64), Vec<u16>> = BTreeMap::new();
        for (shard, forward) in forwards {
            tracing::info!(
                node = %me, shard, from = %forward.from, to = %forward.to,
                "a shard lost before it was handed here is handed on: {why}"
            );
            told.entry((forward.to, forward.version))
                .or_default()
                .push(shard);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                node = %me,
                "hand-offs off a tokio runtime cannot be told on: the new owners run the shards \
                 after {HANDOFF_WAIT:?}"
            );
            return;
        };
        let until = Instant::now() + HANDOFF_WAIT;
        for ((to, version), shards) in told {
            let handed = Control::HandedOff(HandedOff {
                from: me.to_owned(),
                version,
                shards,
            });
            let node = Arc::clone(&node);
            runtime.spawn(async move { tell(&node, &to, &handed, until).await });
        }
    }

    /// Sends on, by the node's table, what was kept for shards that moved on before they were
    /// handed here (in the background: the node's table is being replaced).
    fn reroute(self: &Arc<Self>, queue: Vec<Buffered>) {
        if queue.is_empty() {
            return;
        }
        let node = self.node.get().and_then(Weak::upgrade);
        let runtime = tokio::runtime::Handle::try_current();
        let (Some(node), Ok(runtime)) = (node, runtime) else {
            self.counters
                .undeliverable
                .fetch_add(queue.len() as u64, Ordering::Relaxed);
            tracing::error!(
                messages = queue.len(),
                "messages kept for shards that moved on cannot be sent on (no node or runtime): \
                 dropped"
            );
            return;
        };
        let counting = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut failed = 0_u64;
            for buffered in queue {
                if let Err(error) = node.send(
                    &buffered.kind,
                    &buffered.key,
                    &buffered.payload,
                    buffered.trace.as_ref(),
                ) {
                    failed += 1;
                    tracing::warn!(
                        kind = %buffered.kind, %error,
                        "a message kept for a shard that moved on could not be sent on: dropped"
                    );
                }
            }
            if let Some(inner) = counting.upgrade() {
                inner
                    .counters
                    .undeliverable
                    .fetch_add(failed, Ordering::Relaxed);
            }
        });
    }

    /// Starts the stored entities of `shards` of every kind that runs on its own.
    fn recover(self: &Arc<Self>, shards: &[u16], size: usize) {
        if shards.is_empty() || size == 0 {
            return;
        }
        let recovering: Vec<Arc<Recover>> = self
            .served()
            .into_iter()
            .filter_map(|served| served.recover)
            .collect();
        if recovering.is_empty() {
            return;
        }
        let mut gained = vec![false; size];
        for &shard in shards {
            if let Some(slot) = gained.get_mut(usize::from(shard)) {
                *slot = true;
            }
        }
        let gained: Arc<[bool]> = gained.into();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("shards gained off a tokio runtime: their entities wait for a message");
            return;
        };
        for recover in recovering {
            let gained = Arc::clone(&gained);
            let counting = Arc::downgrade(self);
            runtime.spawn(async move {
                let woken = recover(gained).await;
                if let Some(inner) = counting.upgrade() {
                    inner
                        .counters
                        .recovered
                        .fetch_add(woken as u64, Ordering::Relaxed);
                }
            });
        }
    }
}

impl Inbox for Kinds {
    fn deliver(
        &self,
        kind: &str,
        key: &[u8],
        payload: &[u8],
        trace: Option<TraceContext>,
    ) -> Result<(), InboxRefusal> {
        // The frame carries the trace context itself; the envelope's copy is for the router.
        let served = self.inner.served_kind(kind)?;
        if served.here {
            return Err(InboxRefusal::Rejected(format!(
                "{kind} is served by node, not by shard: address the node its entity lives on"
            )));
        }
        let waiting = {
            let acting = self.inner.acting();
            if acting.incoming.is_empty() {
                None
            } else {
                let shard = shard_of(kind, key, acting.shards().max(1)).0;
                acting.incoming.contains_key(&shard).then_some(shard)
            }
        };
        if let Some(shard) = waiting {
            let mut acting = self.inner.acting_mut();
            let full = acting.buffered >= MAX_BUFFERED;
            if let Some(incoming) = acting.incoming.get_mut(&shard) {
                if full {
                    self.inner
                        .counters
                        .buffer_refused
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(InboxRefusal::Rejected(format!(
                        "busy: shard {shard} waits for its hand-off and the node keeps no more \
                         than {MAX_BUFFERED} messages meanwhile"
                    )));
                }
                incoming.queue.push_back(Buffered {
                    kind: kind.to_owned(),
                    key: key.to_vec(),
                    payload: payload.to_vec(),
                    trace,
                });
                acting.buffered += 1;
                self.inner.counters.buffered.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        (served.deliver)(key, payload)
    }

    fn deliver_direct(
        &self,
        kind: &str,
        key: &[u8],
        payload: &[u8],
        _trace: Option<TraceContext>,
    ) -> Result<(), InboxRefusal> {
        let served = self.inner.served_kind(kind)?;
        if !served.here {
            return Err(InboxRefusal::Rejected(format!(
                "{kind} is sharded: it is addressed by its key's shard, not by node"
            )));
        }
        (served.deliver)(key, payload)
    }

    fn table_changed(&self, node: &str, table: &Table) {
        let shards = table.shards.len();
        // Per shard, what this table does to this node against the last one it acted on.
        let (lost_to_peers, released, arrived, reroute) = {
            let mut acting = self.inner.acting_mut();
            let last = match &acting.table {
                Some(last) if acting.node == node && last.shards.len() == shards => {
                    Some(Arc::clone(last))
                }
                _ => None,
            };
            let member = acting.member;
            let mut handing: BTreeMap<String, Vec<u16>> = BTreeMap::new();
            let mut released = vec![false; shards];
            let mut arrived = Vec::new();
            let mut reroute = Vec::new();
            for (index, now) in table.shards.iter().enumerate() {
                let shard = index as u16;
                let before = last.as_ref().map(|last| &last.shards[index]);
                let mine_before = before.is_some_and(|before| before.node.as_deref() == Some(node));
                let mine_now = now.node.as_deref() == Some(node);
                // Taken away and given back between two tables this node saw: what ran here
                // is stale, and the shard comes from the node that had it meanwhile.
                let came_back =
                    mine_before && mine_now && before.is_some_and(|b| b.token != now.token);
                if mine_before && (!mine_now || came_back) {
                    let waited = acting.incoming.remove(&shard);
                    let ran_here = waited.as_ref().is_none_or(|waited| waited.draining);
                    if let Some(waited) = waited {
                        // What waited for it goes on to its newer owner through the node's
                        // routing.
                        acting.buffered -= waited.queue.len();
                        reroute.extend(waited.queue);
                        if !waited.draining
                            && !came_back
                            && member
                            && let Some(to) = &now.node
                        {
                            // Never ran here: the new owner's hand-off is the one this node
                            // waited for, told on when it comes.
                            acting.forwarding.insert(
                                shard,
                                Forward {
                                    from: waited.from,
                                    to: to.clone(),
                                    version: table.version,
                                    since: waited.since,
                                },
                            );
                        }
                    }
                    if ran_here {
                        match (&now.node, member && !came_back) {
                            (Some(peer), true) => {
                                handing.entry(peer.clone()).or_default().push(shard)
                            }
                            _ => released[index] = true,
                        }
                    }
                }
                if mine_now && (!mine_before || came_back) {
                    // The node that had it before this table's change hands it over, if it
                    // still stands (an unknown fleet counts as standing: the wait is bounded).
                    let standing = |peer: &str| {
                        acting
                            .members
                            .as_ref()
                            .is_none_or(|members| members.contains(peer))
                    };
                    match &now.from {
                        Some(peer) if peer != node && standing(peer) => {
                            acting.incoming.insert(
                                shard,
                                Incoming {
                                    from: peer.clone(),
                                    since: Instant::now(),
                                    queue: VecDeque::new(),
                                    draining: false,
                                },
                            );
                        }
                        _ => arrived.push(shard),
                    }
                }
            }
            acting.node = node.to_owned();
            acting.table = Some(Arc::new(table.clone()));
            (handing, released, arrived, reroute)
        };
        let moved = released.iter().filter(|&&lost| lost).count();
        if moved > 0 {
            let reason = format!(
                "{moved} shard(s) left node {node} at table version {}",
                table.version
            );
            let count: usize = self
                .inner
                .served()
                .iter()
                .map(|served| (served.release)(&released, &reason))
                .sum();
            self.inner
                .counters
                .released
                .fetch_add(count as u64, Ordering::Relaxed);
        }
        self.inner.reroute(reroute);
        if !arrived.is_empty() {
            self.inner
                .counters
                .arrivals
                .fetch_add(arrived.len() as u64, Ordering::Relaxed);
            self.inner.recover(&arrived, shards);
        }
        if !lost_to_peers.is_empty() {
            self.hand_off(node, table.version, shards, lost_to_peers);
        }
    }

    fn accepting(&self) -> bool {
        self.inner.lease.is_valid()
    }

    fn handed_off(&self, from: &str, version: u64, shards: &[u16]) {
        let (me, ready, forwards) = {
            let mut acting = self.inner.acting_mut();
            let ready: Vec<u16> = shards
                .iter()
                .copied()
                .filter(|shard| {
                    acting
                        .incoming
                        .get(shard)
                        .is_some_and(|incoming| incoming.from == from && !incoming.draining)
                })
                .collect();
            let forwards: Vec<(u16, Forward)> = shards
                .iter()
                .filter_map(|shard| {
                    if acting.forwarding.get(shard)?.from != from {
                        return None;
                    }
                    Some((*shard, acting.forwarding.remove(shard)?))
                })
                .collect();
            (acting.node.clone(), ready, forwards)
        };
        tracing::info!(
            %from,
            version,
            shards = ready.len(),
            forwarded = forwards.len(),
            "shards handed over: their entities run here now"
        );
        self.inner
            .tell_forwards(&me, forwards, &format!("{from} handed them over"));
        self.inner.arrive(&ready);
    }
}

impl Kinds {
    /// Hands the entities of the shards this node lost to live peers over, then tells each new
    /// owner, in the background: the node goes on routing meanwhile.
    fn hand_off(
        &self,
        node: &str,
        version: u64,
        shards: usize,
        mut lost: BTreeMap<String, Vec<u16>>,
    ) {
        let started = Instant::now();
        let peer_node = self.inner.node.get().and_then(Weak::upgrade);
        let runtime = tokio::runtime::Handle::try_current();
        let (Some(peer_node), Ok(runtime)) = (peer_node, runtime) else {
            // Nothing can be handed over: no node to send through, or no runtime to do it on.
            // The entities are let go of here and now (the new owners run them from the store
            // after their wait), so they never run on two nodes.
            let mut released = vec![false; shards];
            for shard in lost.values().flatten() {
                released[usize::from(*shard)] = true;
            }
            let reason = "the shards could not be handed over (no node attached, or off a tokio \
                          runtime)";
            tracing::error!(node, "{reason}: their entities are released");
            let count: usize = self
                .inner
                .served()
                .iter()
                .map(|served| (served.release)(&released, reason))
                .sum();
            self.inner
                .counters
                .released
                .fetch_add(count as u64, Ordering::Relaxed);
            return;
        };
        let mut marked = vec![false; shards];
        for shard in lost.values().flatten() {
            marked[usize::from(*shard)] = true;
        }
        let marked: Arc<[bool]> = marked.into();
        let served = self.inner.served();
        let handing: Vec<Arc<HandOff>> = served
            .iter()
            .filter_map(|served| served.hand_off.clone())
            .collect();
        let releasing: Vec<Arc<Release>> =
            served.into_iter().map(|served| served.release).collect();
        let lease = self.inner.lease.clone();
        let inner = Arc::downgrade(&self.inner);
        let me = node.to_owned();
        // Counted from the table change, so whoever sees the table moved sees it under way.
        self.inner.counters.handing.fetch_add(1, Ordering::SeqCst);
        runtime.spawn(async move {
            // A new owner that just joined may not be connected yet: what is queued behind a
            // hand-off is sent on to it, so the hand-off starts once it can be (or after
            // HANDOFF_TIMEOUT, when what cannot be sent on is dead-lettered with the reason).
            for peer in lost.keys() {
                while !peer_node.reaches(peer)
                    && started.elapsed() < HANDOFF_TIMEOUT
                    && lease.is_valid()
                {
                    // Polled, as in `tell`.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            if !lease.is_valid() {
                // The lease went meanwhile: nothing may be handed over any more.
                let reason = "the node's lease lapsed before its hand-off began";
                let count: usize = releasing
                    .iter()
                    .map(|release| release(&marked, reason))
                    .sum();
                tracing::warn!(node = %me, version, released = count, "{reason}: released");
                if let Some(inner) = inner.upgrade() {
                    inner
                        .counters
                        .released
                        .fetch_add(count as u64, Ordering::Relaxed);
                    inner.counters.handing.fetch_sub(1, Ordering::SeqCst);
                }
                return;
            }
            let mut total = HandOffReport::default();
            for hand_off in handing {
                let report = hand_off(Arc::clone(&marked), Arc::clone(&peer_node)).await;
                total.handed_off += report.handed_off;
                total.passivated += report.passivated;
                total.forwarded += report.forwarded;
                total.dead_lettered += report.dead_lettered;
                total.unconfirmed += report.unconfirmed;
            }
            if total.unconfirmed > 0 {
                // Some state may not be in the store yet (a write-through that timed out, an
                // entity that did not answer): the new owners are not told, so they wait
                // HANDOFF_WAIT before they read it, giving a late write the time to land.
                tracing::warn!(
                    node = %me, version, unconfirmed = total.unconfirmed,
                    "a hand-off is not confirmed: the new owners run the shards after \
                     {HANDOFF_WAIT:?}"
                );
                lost.clear();
            }
            for (peer, shards) in lost {
                let handed = Control::HandedOff(HandedOff {
                    from: me.clone(),
                    version,
                    shards,
                });
                tell(&peer_node, &peer, &handed, started + HANDOFF_WAIT).await;
            }
            let took = started.elapsed();
            if let Some(inner) = inner.upgrade() {
                let c = &inner.counters;
                c.handoffs.fetch_add(1, Ordering::Relaxed);
                c.handed_off
                    .fetch_add(total.handed_off as u64, Ordering::Relaxed);
                c.forwarded
                    .fetch_add(total.forwarded as u64, Ordering::Relaxed);
                c.unconfirmed
                    .fetch_add(total.unconfirmed as u64, Ordering::Relaxed);
                c.last_handoff_us
                    .store(took.as_micros() as u64, Ordering::Relaxed);
                c.handing.fetch_sub(1, Ordering::SeqCst);
            }
            tracing::info!(
                node = %me,
                version,
                handed_off = total.handed_off,
                forwarded = total.forwarded,
                dead_lettered = total.dead_lettered,
                unconfirmed = total.unconfirmed,
                took_us = took.as_micros() as u64,
                "shards handed off"
            );
        });
    }
}

/// A handle that sends an entity kind its messages wherever its keys live: `E`'s entities, as
/// served with [`Kinds::serve`] on every node of the fleet, addressed with `M`.
pub struct Sharded<E, M> {
    node: Arc<Node>,
    kind: PhantomData<fn(E, M)>,
}

impl<E, M> Clone for Sharded<E, M> {
    fn clone(&self) -> Self {
        Sharded {
            node: Arc::clone(&self.node),
            kind: PhantomData,
        }
    }
}

impl<E, M> std::fmt::Debug for Sharded<E, M>
where
    E: Entity,
    M: Message,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharded")
            .field("kind", &E::KIND)
            .field("message", &M::NAME)
            .field("node", &self.node.id())
            .finish()
    }
}

impl<E, M> Sharded<E, M>
where
    E: Entity,
    E::Key: Display,
    M: Message,
{
    /// A handle for `E` on `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Sharded {
            node,
            kind: PhantomData,
        }
    }

    /// Sends `message` to entity `key`, on whichever node owns its shard, with `trace` (the
    /// sender's trace context) in the frame.
    ///
    /// # Errors
    /// As [`Node::send`]; [`SendError::Encode`] also when `message` does not encode.
    pub fn send(
        &self,
        key: &E::Key,
        message: &M,
        trace: Option<TraceContext>,
    ) -> Result<Route, SendError> {
        let frame = encode(message, trace)?;
        self.node.send(
            E::KIND,
            key.to_string().as_bytes(),
            frame.wire(),
            trace.as_ref(),
        )
    }

    /// Sends `message` to entity `key` on node `node` itself (a kind served there with
    /// [`Kinds::serve_here`]: it lives with its player's session).
    ///
    /// # Errors
    /// As [`Node::send_to`]; [`SendError::Encode`] also when `message` does not encode.
    pub fn send_to(
        &self,
        node: &str,
        key: &E::Key,
        message: &M,
        trace: Option<TraceContext>,
    ) -> Result<Route, SendError> {
        let frame = encode(message, trace)?;
        self.node.send_to(
            node,
            E::KIND,
            key.to_string().as_bytes(),
            frame.wire(),
            trace.as_ref(),
        )
    }

    /// The node the handle sends through.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }
}

fn encode<M: Message>(message: &M, trace: Option<TraceContext>) -> Result<Frame, SendError> {
    garrison_protocol::encode_frame(
        message,
        FrameMeta {
            seq: 0,
            trace,
            reply: false,
        },
    )
    .map_err(|error| SendError::Encode(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node: &str, key: &str, token: u64, event: ActivationEvent) -> ActivationRecord {
        ActivationRecord {
            node: node.to_owned(),
            kind: "room",
            key: key.to_owned(),
            shard: 7,
            token,
            event,
        }
    }

    fn activated(at_unix_ms: u64) -> ActivationEvent {
        ActivationEvent::Activated { at_unix_ms }
    }

    fn left(how: DepartureKind, last_handled_unix_ms: u64) -> ActivationEvent {
        ActivationEvent::Departed {
            how,
            last_handled_unix_ms,
        }
    }

    #[test]
    fn a_record_reads_back_from_its_line_and_a_bad_line_is_an_error() {
        for event in [activated(5), left(DepartureKind::Lapsed, 9)] {
            let written = record("node-a", "12", 3, event);
            let line = written.to_string();
            assert_eq!(ActivationRecord::parse(&line, &["room"]), Ok(written));
        }
        assert!(ActivationRecord::parse("node-a room 12 7 3 activated", &["room"]).is_err());
        assert!(ActivationRecord::parse("node-a tally 12 7 3 activated 5", &["room"]).is_err());
        assert!(ActivationRecord::parse("node-a room 12 7 3 vanished 5", &["room"]).is_err());
        assert!(ActivationRecord::parse("node-a room 12 99999 3 activated 5", &["room"]).is_err());
    }

    #[test]
    fn runs_on_two_nodes_must_not_overlap_and_the_later_holds_the_newer_token() {
        let handed = [
            record("a", "1", 3, activated(100)),
            record("a", "1", 3, left(DepartureKind::HandedOff, 200)),
            record("b", "1", 5, activated(210)),
        ];
        let check = check_activations(&handed, &HashMap::new()).unwrap();
        assert_eq!((check.moved, check.runs), (1, 2));
        // b activated while a still handled messages.
        let overlapping = [
            record("a", "1", 3, activated(100)),
            record("a", "1", 3, left(DepartureKind::Lapsed, 300)),
            record("b", "1", 5, activated(210)),
        ];
        assert!(check_activations(&overlapping, &HashMap::new()).is_err());
        // A node killed at 150 left no departure: its run ends there.
        let killed = [
            record("a", "1", 3, activated(100)),
            record("b", "1", 5, activated(210)),
        ];
        let ended = HashMap::from([("a".to_owned(), vec![50, 150])]);
        assert!(check_activations(&killed, &ended).is_ok());
        assert!(check_activations(&killed, &HashMap::new()).is_err());
        // The later run with an older token.
        let stale = [
            record("a", "1", 5, activated(100)),
            record("a", "1", 5, left(DepartureKind::Released, 150)),
            record("b", "1", 3, activated(210)),
        ];
        assert!(check_activations(&stale, &HashMap::new()).is_err());
        // A node killed at 150 and restarted on the same log: its first run ended at the
        // kill, and still counts (here it overlaps b's).
        let restarted = [
            record("a", "1", 3, activated(100)),
            record("b", "1", 5, activated(120)),
            record("a", "1", 7, activated(400)),
        ];
        let killed_at = HashMap::from([("a".to_owned(), vec![150])]);
        let overlap = check_activations(&restarted, &killed_at).unwrap_err();
        assert!(overlap.contains("until 150"), "{overlap}");
        // Passivated, then run elsewhere, then back: three runs, none overlapping.
        let passivated = [
            record("a", "1", 3, activated(100)),
            record("a", "1", 3, left(DepartureKind::Passivated, 140)),
            record("b", "1", 5, activated(150)),
            record("b", "1", 5, left(DepartureKind::HandedOff, 190)),
            record("a", "1", 7, activated(200)),
        ];
        let check = check_activations(&passivated, &HashMap::new()).unwrap();
        assert_eq!((check.moved, check.runs), (1, 3));
        for how in [DepartureKind::Passivated, DepartureKind::Stopped] {
            let written = record("a", "1", 3, left(how, 9));
            assert_eq!(
                ActivationRecord::parse(&written.to_string(), &["room"]),
                Ok(written)
            );
        }
    }
}
