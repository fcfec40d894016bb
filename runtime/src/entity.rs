//! The actor-module API: what a kind of game entity declares, and what it sees while it runs.

use std::{fmt::Display, future::Future, hash::Hash, sync::Arc, time::Duration};

use garrison_protocol::{RkyvError, Snapshot, TraceContext};
use garrison_supervisor::{HandlerError, Overflow};
use rkyv::{Deserialize, de::Pool, rancor::Strategy};

use crate::session::SessionId;

/// A state that can be checkpointed and restored: an rkyv [`Snapshot`] that deserializes.
/// Implemented for every such type.
pub trait State: Snapshot + Send + Sized + 'static {
    /// Validates a snapshot and deserializes the state from it.
    ///
    /// # Errors
    /// The protocol's snapshot errors (wrong schema or version, invalid archive).
    fn restore(bytes: bytes::Bytes) -> Result<Self, garrison_protocol::Error>;
}

impl<T> State for T
where
    T: Snapshot + Send + 'static,
    T::Archived: Deserialize<T, Strategy<Pool, RkyvError>>,
{
    fn restore(bytes: bytes::Bytes) -> Result<Self, garrison_protocol::Error> {
        garrison_protocol::snapshot::read::<T>(bytes)
    }
}

/// A message an entity accepts.
pub trait EntityMessage: Send + 'static {
    /// The `game.event.type` trace attribute: which game event this is.
    fn event_type(&self) -> &'static str;

    /// The client's trace context, when the message came in a frame that carried one; the
    /// handling span then joins the client's trace.
    fn trace_context(&self) -> Option<TraceContext> {
        None
    }

    /// Whether handling this message counts as activity for passivation. Timers and ticks that
    /// should not keep an idle entity alive return false.
    fn counts_as_activity(&self) -> bool {
        true
    }
}

/// A protocol declared with `garrison_protocol::messages!` is an entity message as it stands:
/// validated frames go from the edge to the entity without a copy; the event type is the
/// declared message name and the trace context is the frame's.
impl<P: garrison_protocol::Protocol> EntityMessage for P {
    fn event_type(&self) -> &'static str {
        P::name_of(self.frame().kind()).unwrap_or("unknown")
    }

    fn trace_context(&self) -> Option<TraceContext> {
        self.frame().header().trace
    }
}

/// A kind of game entity: a player, a room, a matchmaker.
///
/// One value of the implementing type serves every entity of the kind (it holds what they
/// share: configuration, handles to services); each entity's data is its `State`.
pub trait Entity: Send + Sync + Sized + 'static {
    /// The kind's name: `game.entity.kind`, and the name of its supervisor.
    const KIND: &'static str;
    /// The key that identifies one entity of this kind (player id, room id).
    type Key: Clone + Eq + Hash + Display + Send + Sync + 'static;
    /// The state of one entity; checkpointed as an rkyv snapshot.
    type State: State;
    /// The messages it handles (typed Rust messages, or validated protocol messages wrapped in
    /// them).
    type Message: EntityMessage;

    /// Builds the state of entity `key`: fresh (`recovered` is `None`), or from its last
    /// checkpoint after a crash or a passivation.
    fn activate(
        &self,
        key: &Self::Key,
        recovered: Option<Self::State>,
    ) -> impl Future<Output = Result<Self::State, HandlerError>> + Send;

    /// Handles one message. A panic or error crashes this incarnation: the message goes to the
    /// dead letters, and the entity restarts from its last checkpoint with the messages queued
    /// behind this one.
    fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        message: Self::Message,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// When an entity's state is checkpointed (besides always on passivation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpoint {
    /// Never: a crash restarts the entity fresh (or from its last passivation snapshot).
    Never,
    /// After every `n` handled messages.
    EveryMessages(u32),
    /// After a message, when at least this long has passed since the last checkpoint.
    Every(Duration),
    /// Only when the handler calls [`EntityContext::checkpoint`].
    #[default]
    OnDemand,
}

/// Per-kind settings.
#[derive(Debug, Clone)]
pub struct KindConfig {
    /// Each entity's mailbox capacity.
    pub mailbox_capacity: usize,
    /// What a full mailbox does: `Reject` hands the message back to the sender; `DropOldest`
    /// (for state-like messages) evicts the oldest.
    pub overflow: Overflow,
    /// When state is checkpointed.
    pub checkpoint: Checkpoint,
    /// Passivate an entity idle this long (no message that counts as activity).
    pub passivate_after: Option<Duration>,
    /// The `game.world.zone` of this kind's entities, if it has one.
    pub zone: Option<Arc<str>>,
    /// Restarts allowed per entity within `restart_period` before the runtime gives up on that
    /// entity alone (its siblings run on).
    pub max_restarts: u32,
    /// The window for `max_restarts`.
    pub restart_period: Duration,
    /// Most entities of this kind active at once; activation beyond it is refused.
    pub max_active: usize,
}

impl Default for KindConfig {
    fn default() -> Self {
        KindConfig {
            mailbox_capacity: 256,
            overflow: Overflow::Reject,
            checkpoint: Checkpoint::OnDemand,
            passivate_after: None,
            zone: None,
            max_restarts: 3,
            restart_period: Duration::from_secs(5),
            max_active: 1_000_000,
        }
    }
}

/// What an entity sees while it handles a message.
pub struct EntityContext<'a, E: Entity> {
    pub(crate) key: &'a E::Key,
    pub(crate) incarnation: u64,
    pub(crate) session: Option<SessionId>,
    pub(crate) checkpoint_requested: bool,
    pub(crate) passivate_requested: bool,
}

impl<E: Entity> EntityContext<'_, E> {
    /// This entity's key.
    pub fn key(&self) -> &E::Key {
        self.key
    }

    /// Which incarnation is running: 1 at first activation, +1 per restart or reactivation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The session that sent the current message, if a session sent it.
    pub fn session(&self) -> Option<SessionId> {
        self.session
    }

    /// Checkpoints the state after this message.
    pub fn checkpoint(&mut self) {
        self.checkpoint_requested = true;
    }

    /// Passivates the entity after this message, if no other message is waiting.
    pub fn passivate(&mut self) {
        self.passivate_requested = true;
    }
}
