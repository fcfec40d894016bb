//! The actor-module API: what a kind of game entity declares, and what it sees while it runs.

use std::{fmt::Display, future::Future, hash::Hash, sync::Arc, time::Duration};

use garrison_protocol::{RkyvError, Snapshot, TraceContext};
use garrison_supervisor::{HandlerError, Overflow};
use rkyv::{Deserialize, de::Pool, rancor::Strategy};

use crate::{
    Refusal,
    origin::{Origin, SessionId},
    timer::{Timer, TimerError, TimerId, TimerShared, Timers},
};

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

    /// How much this message matters when its kind is overloaded
    /// ([`KindConfig::overload`]): [`Priority::Normal`](crate::overload::Priority) unless the
    /// kind says otherwise (`entity_messages!`'s `critical = [..]; sheddable = [..];`).
    fn priority(&self) -> crate::overload::Priority {
        crate::overload::Priority::Normal
    }

    /// The message that tells an entity a session bound to it connected, disconnected, resumed
    /// or closed ([`SessionEvent`](crate::SessionEvent)); `None` (the default) when the kind
    /// does not want to know. A room returns `Some(RoomMsg::Session(session, event))` to learn
    /// who left.
    fn session_event(session: SessionId, event: crate::SessionEvent) -> Option<Self>
    where
        Self: Sized,
    {
        let _ = (session, event);
        None
    }
}

/// Declares an entity's message enum and its [`EntityMessage`] impl together: each variant names
/// its `game.event.type`, or takes it from the protocol message it wraps (`=> inner`); an
/// optional `session_event = Variant;` routes [`SessionEvent`](crate::SessionEvent)s to a
/// `Variant(SessionId, SessionEvent)`; optional `critical = [Variant, ..];` and
/// `sheddable = [Variant, ..];` give those variants their [`priority`](EntityMessage::priority)
/// under the kind's overload limit (the others are `Normal`).
///
/// ```
/// use garrison_runtime::{entity_messages, SessionId, SessionEvent};
/// entity_messages! {
///     /// What a room handles.
///     pub enum RoomMsg {
///         /// A player joins.
///         Join(u64) => "join",
///         /// The clock.
///         Tick => "tick",
///         /// A seated player's session changed.
///         Session(SessionId, SessionEvent) => "session",
///     }
///     session_event = Session;
///     critical = [Tick];
///     sheddable = [Join];
/// }
/// use garrison_runtime::{EntityMessage, overload::Priority};
/// assert_eq!(RoomMsg::Tick.event_type(), "tick");
/// assert!(RoomMsg::session_event(SessionId(1), SessionEvent::Closed).is_some());
/// assert_eq!(RoomMsg::Join(7).priority(), Priority::Sheddable);
/// assert_eq!(RoomMsg::Tick.priority(), Priority::Critical);
/// assert_eq!(RoomMsg::Session(SessionId(1), SessionEvent::Closed).priority(), Priority::Normal);
/// ```
#[macro_export]
macro_rules! entity_messages {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident $( ( $($field:ty),* $(,)? ) )? => $label:tt ),* $(,)?
        }
        $( session_event = $session:ident; )?
        $( critical = [ $($critical:ident),* $(,)? ]; )?
        $( sheddable = [ $($sheddable:ident),* $(,)? ]; )?
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $variant $( ( $($field),* ) )? ),*
        }

        impl $crate::EntityMessage for $name {
            fn event_type(&self) -> &'static str {
                match self {
                    $( $crate::entity_messages!(@pattern message $name $variant $( ( $($field),* ) )? ; $label) =>
                        $crate::entity_messages!(@label message $label), )*
                }
            }

            fn trace_context(&self) -> ::core::option::Option<$crate::protocol::TraceContext> {
                match self {
                    $( $crate::entity_messages!(@pattern message $name $variant $( ( $($field),* ) )? ; $label) =>
                        $crate::entity_messages!(@trace message $label), )*
                }
            }

            fn priority(&self) -> $crate::overload::Priority {
                #[allow(unreachable_patterns)]
                match self {
                    $( $( $name::$critical { .. } => $crate::overload::Priority::Critical, )* )?
                    $( $( $name::$sheddable { .. } => $crate::overload::Priority::Sheddable, )* )?
                    _ => $crate::overload::Priority::Normal,
                }
            }

            $(
                fn session_event(
                    session: $crate::SessionId,
                    event: $crate::SessionEvent,
                ) -> ::core::option::Option<Self> {
                    ::core::option::Option::Some($name::$session(session, event))
                }
            )?
        }
    };
    // A variant wrapping a protocol message takes its name (and trace context) from it.
    (@pattern $bound:ident $name:ident $variant:ident ( $field:ty ) ; inner) => {
        $name::$variant($bound)
    };
    (@pattern $bound:ident $name:ident $variant:ident $( ( $($field:ty),* ) )? ; $label:literal) => {
        $name::$variant { .. }
    };
    (@label $inner:ident inner) => { $crate::EntityMessage::event_type($inner) };
    (@label $inner:ident $label:literal) => { $label };
    (@trace $inner:ident inner) => { $crate::EntityMessage::trace_context($inner) };
    (@trace $inner:ident $label:literal) => { ::core::option::Option::None };
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
    /// The state of one entity; checkpointed as an rkyv snapshot. A fresh entity starts from
    /// `State::default()` unless its `activate` says otherwise.
    type State: State + Default;
    /// The messages it handles (typed Rust messages, or validated protocol messages wrapped in
    /// them).
    type Message: EntityMessage;

    /// Builds the state of entity `key`. `activation` says why it runs and carries the state to
    /// recover: none for a fresh entity, the last checkpoint after a crash, the snapshot after a
    /// passivation. The default returns the recovered state, or `State::default()` for a fresh
    /// entity (and one whose crash left no checkpoint); override it to count restarts, to build a
    /// fresh state from the key, or to migrate an old state.
    ///
    /// A panic or error here abandons the activation (it is not retried): the messages waiting
    /// for it are dead-lettered with the reason, the snapshot it was given is quarantined
    /// ([`Entities::quarantined`](crate::Entities::quarantined)), and the key's next message
    /// activates it fresh.
    fn activate(
        &self,
        key: &Self::Key,
        activation: Activation<Self::State>,
    ) -> impl Future<Output = Result<Self::State, HandlerError>> + Send {
        let _ = key;
        std::future::ready(Ok(activation.unwrap_or_default()))
    }

    /// Handles one message. A panic or error crashes this incarnation: the message goes to the
    /// dead letters, and the entity restarts from its last checkpoint with the messages queued
    /// behind this one.
    fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        message: Self::Message,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Applies one entry this kind [logged](EntityContext::log) to a recovered state: after a
    /// crash or a restart the state is its last snapshot with every entry logged since replayed
    /// through here, in order, before [`Entity::activate`] sees it. It must do what handling
    /// the logged message did to the state, and nothing else (no sends: replay is not a
    /// rerun). The default refuses, for kinds that never log.
    ///
    /// # Errors
    /// An entry it cannot apply (damaged, or from another version): the replay stops there,
    /// the entity goes on from the state before it and checkpoints.
    fn replay(
        &self,
        key: &Self::Key,
        state: &mut Self::State,
        entry: &[u8],
    ) -> Result<(), HandlerError> {
        let _ = (key, state, entry);
        Err(format!(
            "entity kind {} logs entries but does not implement replay",
            Self::KIND
        )
        .into())
    }

    /// Runs once per incarnation after [`Entity::activate`], before the first message, with a
    /// context: where an entity arms what it needs running, whatever woke it (a room recovered
    /// from the store after a restart re-arms its clock here; a timer kept across a crash is
    /// already armed, see [`EntityContext::timers`]).
    ///
    /// # Errors
    /// As [`Entity::activate`]: the activation is abandoned.
    fn started(
        &self,
        context: &mut EntityContext<'_, Self>,
        state: &mut Self::State,
    ) -> Result<(), HandlerError> {
        let _ = (context, state);
        Ok(())
    }
}

/// Why an entity is activated, with the state it recovers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activation<S> {
    /// There is nothing to recover: the key's first activation (or one after its snapshot was
    /// quarantined).
    Fresh,
    /// Restarted after a crash, from its last checkpoint; `None` when it never checkpointed
    /// (its kind's [`Checkpoint`] is `OnDemand` or `Never`): the state is lost and the runtime
    /// logs a warning saying which setting keeps it.
    Restarted(Option<S>),
    /// Reactivated after a passivation (or loaded with
    /// [`Entities::register_passivated`](crate::Entities::register_passivated)), from its
    /// snapshot.
    Reactivated(S),
    /// Recovered from its kind's state store (after a process restart, or on another node):
    /// its last stored snapshot with its log replayed.
    Recovered(S),
}

impl<S> Activation<S> {
    /// The state to recover, if any.
    pub fn into_state(self) -> Option<S> {
        match self {
            Activation::Fresh | Activation::Restarted(None) => None,
            Activation::Restarted(Some(state))
            | Activation::Reactivated(state)
            | Activation::Recovered(state) => Some(state),
        }
    }

    /// The state to recover, or a fresh default one.
    pub fn unwrap_or_default(self) -> S
    where
        S: Default,
    {
        self.into_state().unwrap_or_default()
    }

    /// A short label for logs and traces: `fresh`, `restart`, `reactivation` or `recovery`.
    pub fn label(&self) -> &'static str {
        match self {
            Activation::Fresh => "fresh",
            Activation::Restarted(_) => "restart",
            Activation::Reactivated(_) => "reactivation",
            Activation::Recovered(_) => "recovery",
        }
    }
}

/// When an entity's state is checkpointed (besides always on passivation). The checkpoint is
/// what a crash restarts the entity from.
///
/// The default, `EveryMessages(1)`, keeps the promise that a crash loses nothing but the message
/// that caused it, at the cost of writing a snapshot after every handled message (a small state
/// costs well under a microsecond; see `docs/runtime-semantics.md`). A message that leaves the state
/// as it was keeps the last checkpoint: nothing is copied or stored. A kind with a large state or
/// a high message rate chooses `OnDemand` or `Every` and accepts losing what changed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// Never: a crash restarts the entity fresh (or from its last passivation snapshot).
    Never,
    /// After every `n` handled messages.
    EveryMessages(u32),
    /// After a message, when at least this long has passed since the last checkpoint.
    Every(Duration),
    /// Only when the handler calls [`EntityContext::checkpoint`].
    OnDemand,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint::EveryMessages(1)
    }
}

/// Per-kind settings.
#[derive(Debug, Clone)]
pub struct KindConfig {
    /// Each entity's mailbox capacity.
    pub mailbox_capacity: usize,
    /// What a full mailbox does: `Reject` hands the message back to the sender; `DropOldest`
    /// (for state-like messages) evicts the oldest.
    pub overflow: Overflow,
    /// When state is checkpointed (default: after every message).
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
    /// Most timers one entity may have armed at once ([`EntityContext::send_after`],
    /// [`EntityContext::every`]); arming one more is refused with [`TimerError::TooMany`].
    pub max_timers: usize,
    /// Where checkpoints and logs go beyond the process (default: nowhere, [`Durability::Memory`]).
    pub durability: Durability,
    /// Most entries an entity's log holds; a handler that would log past it checkpoints
    /// instead (the snapshot supersedes the log).
    pub max_log_entries: usize,
    /// Most entities waiting to be written to the store at once (the write-behind set; see
    /// [`Durability`] for what a full set does).
    pub max_pending_writes: usize,
    /// An adaptive limit on the kind's messages accepted and not yet handled (default none):
    /// a send past it, or a [`Sheddable`](crate::overload::Priority) one while the kind's
    /// mailbox wait or tick lateness is over the target, is refused as
    /// [`Refusal::Overloaded`] with a retry-after; [`Critical`](crate::overload::Priority)
    /// messages, session events and timer ticks always pass. The limit follows the kind's own
    /// latency, and any other kind's it is told to watch ([`Entities::overload_limit`]).
    ///
    /// [`Entities::overload_limit`]: crate::Entities::overload_limit
    pub overload: Option<crate::overload::OverloadConfig>,
    /// Where the kind's entities run (default: on the tree's runtime; see [`Placement`]).
    ///
    /// [`Placement`]: crate::Placement
    pub placement: crate::Placement,
}

/// Where a kind's checkpoints and logs are kept beyond the process's memory.
///
/// Write-behind and write-through share one writer per kind, which writes each waiting entity's
/// newest state only (the set of waiting entities coalesces), in batches. When the set is full
/// (`KindConfig::max_pending_writes`, only while the store is down or too slow), a change of an
/// entity not already waiting is kept in memory only until that entity's next change; each is
/// counted ([`DurabilityStats::dropped`](crate::DurabilityStats)) and logged. A failing store
/// never stops an entity: writes are retried and the newest state written when it is back.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Memory only: a crash restarts from the last checkpoint, a killed process loses it.
    #[default]
    Memory,
    /// Written in the background, at most about `max_lag` after the change while the store
    /// keeps up: a killed process loses at most that window.
    WriteBehind {
        /// The store.
        store: crate::store::Store,
        /// The bound on the lag.
        max_lag: Duration,
    },
    /// Each message's checkpoint or log entries are in the store before the entity handles its
    /// next message (waiting at most two seconds, then left to the write-behind path and
    /// counted): an inventory purchase.
    WriteThrough {
        /// The store.
        store: crate::store::Store,
    },
}

impl Durability {
    /// Write-behind to `store` with a 100 ms bound on the lag.
    pub fn write_behind(store: crate::store::Store) -> Self {
        Durability::WriteBehind {
            store,
            max_lag: Duration::from_millis(100),
        }
    }

    /// Write-through to `store`.
    pub fn write_through(store: crate::store::Store) -> Self {
        Durability::WriteThrough { store }
    }
}

impl Default for KindConfig {
    fn default() -> Self {
        KindConfig {
            mailbox_capacity: 256,
            overflow: Overflow::Reject,
            checkpoint: Checkpoint::default(),
            passivate_after: None,
            zone: None,
            max_restarts: 3,
            restart_period: Duration::from_secs(5),
            max_active: 1_000_000,
            max_timers: 16,
            durability: Durability::Memory,
            max_log_entries: 4096,
            max_pending_writes: 65_536,
            overload: None,
            placement: crate::Placement::Tree,
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
    pub(crate) stop_requested: bool,
    /// The client frame that caused this message, if one did.
    pub(crate) origin: Option<&'a Origin>,
    pub(crate) timers: &'a mut Timers<E>,
    pub(crate) timer_shared: &'a TimerShared<E>,
    /// Entries logged by this message, committed only if it is handled.
    pub(crate) logged: Vec<bytes::Bytes>,
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

    /// Appends `entry` to this entity's log, once this message is handled (a failed handler
    /// logs nothing): a cheaper checkpoint for a large state that changes a little per message.
    /// A crash or a restart recovers the last snapshot and replays every entry logged since
    /// through [`Entity::replay`], in order. Checkpointing (a due [`Checkpoint`] or
    /// [`EntityContext::checkpoint`]) starts the log afresh; so does logging past
    /// [`KindConfig::max_log_entries`], or logging before any checkpoint. A lockstep room logs
    /// each accepted input and each frame, and checkpoints every few seconds of frames.
    pub fn log(&mut self, entry: impl Into<bytes::Bytes>) {
        self.logged.push(entry.into());
    }

    /// Passivates the entity after this message, if no other message is waiting.
    pub fn passivate(&mut self) {
        self.passivate_requested = true;
    }

    /// Answers the client request that caused this message: `message` goes to the connection
    /// that sent the frame, with the frame's `seq` and the reply flag, so the client matches it
    /// to its request (the protocol's "Requests and replies"). The request may have come
    /// through other entities first: one that passes it on with [`EntityContext::forward`]
    /// lets the next answer it.
    ///
    /// # Errors
    /// [`Refusal::NoRequest`] when no client frame caused this message (a timer, another
    /// entity's own message); [`Refusal::OutboundFull`] when the message cannot be encoded (a
    /// warning names it) or the connection's queue refuses it (it is closing, or full and now
    /// closing as a slow consumer).
    pub fn reply<M: garrison_protocol::Message>(&mut self, message: &M) -> Result<(), Refusal> {
        let Some(origin) = self.origin else {
            return Err(Refusal::NoRequest { kind: E::KIND });
        };
        if origin.answer(message) {
            Ok(())
        } else {
            Err(Refusal::OutboundFull {
                session: origin.session,
            })
        }
    }

    /// Refuses the client request that caused this message: the client gets a `Refused` with
    /// the request's `seq`, `code` and `reason` (an illegal move, a full table), as it would for
    /// a refusal at the gateway. The entity runs on; nothing is dead-lettered.
    ///
    /// # Errors
    /// As [`EntityContext::reply`].
    pub fn refuse(
        &mut self,
        code: garrison_protocol::control::RefusalCode,
        reason: impl Into<String>,
    ) -> Result<(), Refusal> {
        let seq = self.origin.map_or(0, |origin| origin.seq);
        crate::stats::refusal_sent(code.code());
        self.reply(&garrison_protocol::control::Refused {
            seq,
            code: code.code(),
            reason: reason.into(),
            retry_after_ms: 0,
        })
    }

    /// Passes the request being handled on to entity `key` of `entities`' kind, as `message`:
    /// it goes on behalf of the same session, and carries the client frame's origin, so that
    /// entity can [`reply`](EntityContext::reply) to the client (or the client is told if it
    /// fails on it). A player entity forwarding a move to its room does this.
    ///
    /// # Errors
    /// As [`Entities::send`](crate::Entities::send).
    pub fn forward<T: Entity>(
        &self,
        entities: &crate::Entities<T>,
        key: &T::Key,
        message: T::Message,
    ) -> Result<(), crate::Refused<T::Message>> {
        entities.deliver_from(key, message, self.session, self.origin.cloned())
    }

    /// Whether this message was caused by a client frame that [`EntityContext::reply`] can
    /// answer.
    pub fn is_request(&self) -> bool {
        self.origin.is_some()
    }

    /// Delivers `message` to this entity once, `delay` from now (a turn clock, a respawn).
    /// The timer belongs to this incarnation: a crash, a passivation or a stop cancels it.
    /// Handling it does not count as activity for passivation.
    ///
    /// # Errors
    /// [`TimerError::TooMany`] beyond [`KindConfig::max_timers`].
    pub fn send_after(
        &mut self,
        delay: Duration,
        message: E::Message,
    ) -> Result<TimerId, TimerError> {
        self.timer(Timer::after(delay, message))
    }

    /// Delivers `make()` to this entity every `period` (a room's tick), until cancelled or the
    /// incarnation ends; [`Timer::surviving_restart`] through [`EntityContext::timer`] keeps
    /// it across a crash. Ticks do not count as activity for passivation.
    ///
    /// # Errors
    /// [`TimerError::TooMany`] beyond [`KindConfig::max_timers`]; [`TimerError::ZeroPeriod`].
    pub fn every(
        &mut self,
        period: Duration,
        make: impl Fn() -> E::Message + Send + Sync + 'static,
    ) -> Result<TimerId, TimerError> {
        self.timer(Timer::every(period, make))
    }

    /// Arms `timer` (see the `timer` rules in `docs/runtime-semantics.md`).
    ///
    /// # Errors
    /// As [`EntityContext::every`].
    pub fn timer(&mut self, timer: Timer<E::Message>) -> Result<TimerId, TimerError> {
        self.timers.arm(self.timer_shared, self.key, timer)
    }

    /// Cancels timer `id`; returns whether it was armed. A tick it already queued is dropped,
    /// not delivered.
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        self.timers.cancel(self.timer_shared, id)
    }

    /// Timers this entity has armed now.
    pub fn timers(&self) -> usize {
        self.timers.len()
    }

    /// Ends the entity for good once its mailbox is empty (after this message, or after the
    /// messages already queued behind it, which it still handles): the registry forgets it and
    /// its checkpoint, and its key's next message activates a fresh entity. A finished match or
    /// a player who left ends this way.
    pub fn stop(&mut self) {
        self.stop_requested = true;
    }
}
