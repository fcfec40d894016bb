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
//! [`DeadLetter`]: crate::node::DeadLetter

use std::collections::HashMap;
use std::fmt::Display;
use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use garrison_protocol::{
    DecodeConfig, Frame, FrameMeta, Message, MessageKind, TraceContext, Validated,
};
use garrison_runtime::{Entities, Entity};

use crate::envelope::MAX_ENVELOPE;
use crate::node::{Inbox, InboxRefusal, Node, Route, SendError};
use crate::placement::Table;
use crate::shard::shard_of;

type Deliver = dyn Fn(&[u8], &[u8]) -> Result<(), InboxRefusal> + Send + Sync;
/// Lets go of a kind's entities on the shards marked lost, with a reason; returns how many.
type Release = dyn Fn(&[bool], &str) -> usize + Send + Sync;

/// One kind served to the fleet.
#[derive(Clone)]
struct Served {
    deliver: Arc<Deliver>,
    release: Arc<Release>,
}

/// The entity kinds a node serves to its fleet: the node's [`Inbox`]. Give a clone to
/// [`Node::start`] and [`serve`](Kinds::serve) kinds on it, before or after the node starts.
///
/// It also keeps the kinds' entities on the shards the node owns, as the node's table says:
/// - each activation's writes carry the fencing token of its key's shard in the table the node
///   acts on when it activates ([`Entities::fence_by`]), 0 for a shard the node does not own.
///   An activation that outlives the node's ownership keeps its old token, so once the shard's
///   new owner has written with the newer token, the old one's writes are refused;
/// - when a table takes shards from the node (they moved, or its lease is gone), the kinds'
///   entities on them are released ([`Entities::release`]): stopped here, their queued
///   messages dead-lettered with the reason.
#[derive(Clone, Default)]
pub struct Kinds {
    kinds: Arc<RwLock<HashMap<&'static str, Served>>>,
    acting: Arc<RwLock<Acting>>,
    released: Arc<std::sync::atomic::AtomicU64>,
}

/// The node the kinds are served on and the table it acts on, as its [`Inbox`] was last told.
#[derive(Default)]
struct Acting {
    node: String,
    table: Option<Arc<Table>>,
}

impl Acting {
    /// The fencing token this node holds for `key` of `kind`: its shard's, if the node owns
    /// it, else 0 (refused by any owner's record).
    fn token(&self, kind: &str, key: &[u8]) -> u64 {
        let Some(table) = &self.table else {
            return 0;
        };
        let shards = u16::try_from(table.shards.len()).unwrap_or(u16::MAX);
        match table.owner(shard_of(kind, key, shards)) {
            Some((owner, token)) if owner == self.node => token,
            _ => 0,
        }
    }
}

impl std::fmt::Debug for Kinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds = self.kinds.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_set().entries(kinds.keys()).finish()
    }
}

/// Only frames of `M`'s kind are decoded for `M`.
fn is_kind<M: Message>(kind: MessageKind) -> bool {
    kind == M::KIND
}

impl Kinds {
    /// No kinds yet.
    pub fn new() -> Self {
        Kinds::default()
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
        let config = DecodeConfig {
            max_frame_len: MAX_ENVELOPE,
            known_kind: is_kind::<M>,
        };
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
        let acting = Arc::clone(&self.acting);
        entities.fence_by(move |key: &E::Key| {
            acting
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .token(E::KIND, key.to_string().as_bytes())
        });
        let deliver = move |key: &[u8], payload: &[u8]| -> Result<(), InboxRefusal> {
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
                    InboxRefusal::Rejected(format!(
                        "not a valid {} for {}: {error}",
                        M::NAME,
                        E::KIND
                    ))
                })?;
            entities
                .send(&key, wrap(message))
                .map_err(|refused| InboxRefusal::Rejected(refused.reason.to_string()))
        };
        self.kinds
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                E::KIND,
                Served {
                    deliver: Arc::new(deliver),
                    release: Arc::new(release),
                },
            );
    }

    /// Entities released so far because their shards left this node.
    pub fn released(&self) -> u64 {
        self.released.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Inbox for Kinds {
    fn deliver(
        &self,
        kind: &str,
        key: &[u8],
        payload: &[u8],
        _trace: Option<TraceContext>,
    ) -> Result<(), InboxRefusal> {
        // The frame carries the trace context itself; the envelope's copy is for the router.
        let deliver = self
            .kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(kind)
            .map(|served| Arc::clone(&served.deliver))
            .ok_or_else(|| InboxRefusal::UnknownKind(kind.to_owned()))?;
        deliver(key, payload)
    }

    fn table_changed(&self, node: &str, table: &Table) {
        // The shards the last table gave this node and this one does not.
        let lost: Vec<bool> = {
            let mut acting = self.acting.write().unwrap_or_else(PoisonError::into_inner);
            let lost = match &acting.table {
                Some(last) if acting.node == node && last.shards.len() == table.shards.len() => {
                    last.shards
                        .iter()
                        .zip(&table.shards)
                        .map(|(was, now)| {
                            was.node.as_deref() == Some(node) && now.node.as_deref() != Some(node)
                        })
                        .collect()
                }
                _ => Vec::new(),
            };
            acting.node = node.to_owned();
            acting.table = Some(Arc::new(table.clone()));
            lost
        };
        let moved = lost.iter().filter(|&&lost| lost).count();
        if moved == 0 {
            return;
        }
        let reason = format!(
            "{moved} shard(s) left node {node} at table version {}",
            table.version
        );
        let kinds: Vec<Served> = self
            .kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let released: usize = kinds
            .iter()
            .map(|served| (served.release)(&lost, &reason))
            .sum();
        self.released
            .fetch_add(released as u64, std::sync::atomic::Ordering::Relaxed);
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
    /// As [`Node::send`]; [`SendError::Envelope`] also when `message` does not encode.
    pub fn send(
        &self,
        key: &E::Key,
        message: &M,
        trace: Option<TraceContext>,
    ) -> Result<Route, SendError> {
        let frame = garrison_protocol::encode_frame(
            message,
            FrameMeta {
                seq: 0,
                trace,
                reply: false,
            },
        )
        .map_err(|error| SendError::Encode(error.to_string()))?;
        self.node.send(
            E::KIND,
            key.to_string().as_bytes(),
            frame.wire(),
            trace.as_ref(),
        )
    }
}

/// A node acting on its fleet's shard table ([`follow`]). Dropping it stops following: the node
/// keeps the last table it was given.
#[cfg(feature = "etcd")]
#[derive(Debug)]
pub struct Following {
    task: tokio::task::JoinHandle<()>,
    applied: Arc<std::sync::atomic::AtomicU64>,
}

#[cfg(feature = "etcd")]
impl Drop for Following {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(feature = "etcd")]
impl Following {
    /// How many tables the node has been given so far (one per table version read, and one
    /// per change of its standing).
    pub fn applied(&self) -> u64 {
        self.applied.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Keeps `node` acting on `fleet`'s shard table: every table the fleet member reads from etcd
/// becomes the table the node routes and accepts by (and, through its [`Kinds`], the one its
/// activations take their fencing tokens from). Once the member's lease is gone, the node acts
/// on the table with none of the shards its own: it delivers nothing more to its entities
/// (local sends are [`SendError::NoOwner`], peers' messages are refused as `NotOwner`) and new
/// activations get token 0, whatever the last table it read says, until the new owners are
/// known from etcd. Must be called on a tokio runtime.
#[cfg(feature = "etcd")]
pub fn follow(fleet: &crate::etcd::Fleet, node: Arc<Node>) -> Following {
    use crate::etcd::Standing;
    let (mut tables, mut standing) = (fleet.subscribe(), fleet.subscribe_standing());
    let applied = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&applied);
    let task = tokio::spawn(async move {
        loop {
            let table = Arc::clone(&tables.borrow_and_update());
            let member = *standing.borrow_and_update() == Standing::Member;
            let acting = if member {
                (*table).clone()
            } else {
                without(&table, node.id())
            };
            match node.set_table(acting) {
                Ok(()) => {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(error) => tracing::error!(
                    node = node.id(),
                    version = table.version,
                    "the fleet's table does not fit this node, which keeps its last one: {error}"
                ),
            }
            tokio::select! {
                changed = tables.changed() => if changed.is_err() { return },
                changed = standing.changed() => if changed.is_err() { return },
            }
        }
    });
    Following { task, applied }
}

/// `table` with none of `node`'s shards assigned.
#[cfg(feature = "etcd")]
fn without(table: &Table, node: &str) -> Table {
    let mut table = table.clone();
    for assignment in &mut table.shards {
        if assignment.node.as_deref() == Some(node) {
            assignment.node = None;
        }
    }
    table
}
