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

type Deliver = dyn Fn(&[u8], &[u8]) -> Result<(), InboxRefusal> + Send + Sync;

/// The entity kinds a node serves to its fleet: the node's [`Inbox`]. Give a clone to
/// [`Node::start`] and [`serve`](Kinds::serve) kinds on it, before or after the node starts.
#[derive(Clone, Default)]
pub struct Kinds {
    kinds: Arc<RwLock<HashMap<&'static str, Arc<Deliver>>>>,
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
            .insert(E::KIND, Arc::new(deliver));
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
            .cloned()
            .ok_or_else(|| InboxRefusal::UnknownKind(kind.to_owned()))?;
        deliver(key, payload)
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
