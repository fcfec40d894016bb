//! The entity registry of one kind: stable addressing by key, single activation, passivation to
//! snapshot bytes, and reactivation on the next message.
//!
//! Concurrency rules, which together make "a key reaches exactly one live incarnation" and "no
//! accepted message is stranded" hold:
//! - a message is pushed into an entity's mailbox while the sender holds the key's registry
//!   entry for reading;
//! - activation inserts the new mailbox handle while holding the entry for writing, before the
//!   actor starts, so concurrent first sends find it and queue behind each other;
//! - passivation replaces the entry with the snapshot while holding it for writing, and only if
//!   the mailbox is empty; no push can be in flight then, and none can reach the old mailbox
//!   afterwards.

use std::{
    fmt,
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use dashmap::{DashMap, mapref::entry::Entry};
use garrison_supervisor::{
    ChildRef, ChildSpec, CrashLoop, GameAttributes, MailboxClosed, Restart, SendError, Sent, Start,
    SupervisorBuilder, SupervisorRef, SupervisorSpec,
};

use crate::{
    Entity, Error, KindConfig, clock,
    dead_letter::DeadLetters,
    host::{EntityWorker, Envelope},
    quarantine::{Quarantine, Quarantined},
    session::{SessionId, Sessions},
};

/// What the first incarnation of an activation recovers from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// Nothing: a fresh entity.
    Nothing,
    /// The snapshot it passivated to (or was registered with).
    Passivation,
    /// The last checkpoint of an earlier activation that crashed and was given up on.
    Crash,
}

/// Shared by the incarnations of one activation: its last checkpoint and when it last worked.
pub(crate) struct EntityCell {
    pub(crate) checkpoint: Mutex<Option<Bytes>>,
    pub(crate) last_active: AtomicU64,
    pub(crate) recovery: Recovery,
}

pub(crate) enum Slot<E: Entity> {
    Active {
        handle: ChildRef<Envelope<E>>,
        cell: Arc<EntityCell>,
    },
    Passivated(Bytes),
}

pub(crate) struct Inner<E: Entity> {
    pub(crate) module: E,
    pub(crate) config: KindConfig,
    pub(crate) map: DashMap<E::Key, Slot<E>>,
    pub(crate) dead_letters: Arc<DeadLetters>,
    pub(crate) quarantine: Quarantine,
    spec: SupervisorSpec,
    supervisor: SupervisorRef,
    activations: AtomicU64,
    sweeper: OnceLock<()>,
    /// The runtime entities run on (see `concurrency`): activations start there whoever sends.
    runtime: Option<tokio::runtime::Handle>,
}

/// All entities of kind `E`: the registry, and the handle to send them messages.
pub struct Entities<E: Entity> {
    inner: Arc<Inner<E>>,
}

impl<E: Entity> Clone for Entities<E> {
    fn clone(&self) -> Self {
        Entities {
            inner: self.inner.clone(),
        }
    }
}

impl<E: Entity> fmt::Debug for Entities<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entities")
            .field("kind", &E::KIND)
            .field("registered", &self.inner.map.len())
            .finish()
    }
}

/// A message an entity did not accept, handed back with the reason.
#[derive(Debug)]
pub struct Refused<M> {
    /// Why.
    pub reason: Refusal,
    /// The message.
    pub message: M,
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The entity's mailbox is full (its kind's overflow policy is `Reject`).
    MailboxFull,
    /// The session may not address this entity, or is not open.
    Session(Error),
    /// The kind is not running: its supervisor was never started in a tree, or has stopped.
    KindNotRunning {
        /// The kind.
        kind: &'static str,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::MailboxFull => f.write_str("the entity's mailbox is full; retry later"),
            Refusal::Session(error) => error.fmt(f),
            Refusal::KindNotRunning { kind } => write!(
                f,
                "entity kind {kind} is not running: add it to the supervision tree \
                 (`entities \"{kind}\" => registry.start();` in `supervisor!`, or \
                 `ChildSpec::new(\"{kind}\", registry.start())`) and start the tree before \
                 sending"
            ),
        }
    }
}

impl<E: Entity> Entities<E> {
    /// The registry for kind `E`, served by `module`. Create it on the tokio runtime entities
    /// should run on: activations start there, whichever thread sends.
    ///
    /// # Errors
    /// [`Error::KindNotStarted`] when the configuration cannot make a supervisor (a zero restart
    /// period).
    pub fn new(module: E, config: KindConfig) -> Result<Self, Error> {
        let spec = SupervisorBuilder::dynamic(E::KIND, config.max_active)
            .intensity(config.max_restarts, config.restart_period)
            .crash_loop(CrashLoop::RemoveChild)
            .build()
            .map_err(|_| Error::KindNotStarted { kind: E::KIND })?;
        let supervisor = spec.handle();
        Ok(Entities {
            inner: Arc::new(Inner {
                module,
                config,
                map: DashMap::new(),
                dead_letters: Arc::new(DeadLetters::default()),
                quarantine: Quarantine::default(),
                spec,
                supervisor,
                activations: AtomicU64::new(0),
                sweeper: OnceLock::new(),
                runtime: crate::concurrency::current(),
            }),
        })
    }

    /// How to start this kind in a supervision tree: its dynamic supervisor.
    pub fn start(&self) -> Start {
        Start::supervisor(self.inner.spec.clone())
    }

    /// The kind's supervisor.
    pub fn supervisor(&self) -> &SupervisorRef {
        &self.inner.supervisor
    }

    /// A stable address for entity `key`; sending through it activates the entity if needed.
    pub fn get(&self, key: E::Key) -> EntityRef<E> {
        EntityRef {
            entities: self.clone(),
            key,
        }
    }

    /// Sends `message` to entity `key`, activating it if it has no live incarnation.
    ///
    /// # Errors
    /// The message is handed back when the mailbox is full ([`Refusal::MailboxFull`]) or the kind
    /// is not running ([`Refusal::KindNotRunning`]).
    pub fn send(&self, key: &E::Key, message: E::Message) -> Result<(), Refused<E::Message>> {
        self.deliver(key, message, None)
    }

    /// Sends `message` to entity `key` on behalf of session `session` without checking a binding:
    /// for an entity forwarding its player's request (a player session to its room), which the
    /// runtime trusts as it trusts any server code. The handling span carries the session's
    /// `game.session.id`, and the handler sees it in [`EntityContext::session`].
    ///
    /// # Errors
    /// As [`Entities::send`].
    ///
    /// [`EntityContext::session`]: crate::EntityContext::session
    pub fn send_for(
        &self,
        session: SessionId,
        key: &E::Key,
        message: E::Message,
    ) -> Result<(), Refused<E::Message>> {
        self.deliver(key, message, Some(session))
    }

    /// Sends `message` to entity `key` on behalf of session `session`, which must be bound to it.
    ///
    /// # Errors
    /// As [`Entities::send`], and [`Refusal::Session`] when the session may not address the
    /// entity.
    pub fn send_as(
        &self,
        sessions: &Sessions,
        session: SessionId,
        key: &E::Key,
        message: E::Message,
    ) -> Result<(), Refused<E::Message>> {
        // The session hop of a player's message: gateway frame -> session -> entity.
        let span = if crate::telemetry::unsampled() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "garrison.session.send",
                otel.name = %format_args!("session.send {}", E::KIND),
                game.session.id = session.0,
                game.event.type = crate::EntityMessage::event_type(&message),
                game.world.zone = self.inner.config.zone.as_deref(),
                game.entity.kind = E::KIND,
                game.entity.key = %key,
                refused = tracing::field::Empty,
            )
        };
        let _entered = span.enter();
        if let Err(error) = sessions.check::<E>(session, key) {
            span.record("refused", tracing::field::display(&error));
            return Err(Refused {
                reason: Refusal::Session(error),
                message,
            });
        }
        self.deliver(key, message, Some(session))
            .inspect_err(|refused| {
                span.record("refused", tracing::field::debug(&refused.reason));
            })
    }

    fn deliver(
        &self,
        key: &E::Key,
        message: E::Message,
        session: Option<SessionId>,
    ) -> Result<(), Refused<E::Message>> {
        let envelope = Envelope::Message {
            message,
            parent: tracing::Span::current(),
            session,
            unsampled: crate::telemetry::unsampled(),
            origin: crate::session::current_origin(),
        };
        self.push(key, envelope)
            .map_err(|(reason, envelope)| Refused {
                reason,
                message: envelope.into_message(),
            })
    }

    /// Pushes an envelope to the live incarnation of `key`, activating one if there is none.
    // The error hands the envelope back by value, as `SendError` does: a refusal is the rare path,
    // and boxing it would add an allocation to every refusal to save a move.
    #[allow(clippy::result_large_err)]
    fn push(&self, key: &E::Key, envelope: Envelope<E>) -> Result<(), (Refusal, Envelope<E>)> {
        let envelope = {
            // Fast path: the entity is active; push while holding the entry for reading.
            let Some(slot) = self.inner.map.get(key) else {
                return self.activate_and_push(key, envelope);
            };
            match &*slot {
                Slot::Active { handle, .. } => match handle.send(envelope) {
                    Ok(sent) => {
                        self.evicted(key, sent);
                        return Ok(());
                    }
                    Err(SendError::Full(envelope)) => return Err((Refusal::MailboxFull, envelope)),
                    // Its incarnation is gone for good (it stopped itself, or was given up on
                    // after a crash loop): reactivate below.
                    Err(SendError::Closed(envelope)) => envelope,
                },
                Slot::Passivated(_) => envelope,
            }
        };
        self.activate_and_push(key, envelope)
    }

    #[allow(clippy::result_large_err)]
    fn activate_and_push(
        &self,
        key: &E::Key,
        envelope: Envelope<E>,
    ) -> Result<(), (Refusal, Envelope<E>)> {
        let entry = self.inner.map.entry(key.clone());
        let (recovered, recovery, envelope) = match &entry {
            Entry::Occupied(occupied) => match occupied.get() {
                // Someone activated it between our read and this write.
                Slot::Active { handle, cell } => match handle.send(envelope) {
                    Ok(sent) => {
                        self.evicted(key, sent);
                        return Ok(());
                    }
                    Err(SendError::Full(envelope)) => return Err((Refusal::MailboxFull, envelope)),
                    Err(SendError::Closed(envelope)) => {
                        let checkpoint = cell
                            .checkpoint
                            .lock()
                            .unwrap_or_else(|poison| poison.into_inner())
                            .clone();
                        let recovery = match checkpoint {
                            Some(_) => Recovery::Crash,
                            None => Recovery::Nothing,
                        };
                        (checkpoint, recovery, envelope)
                    }
                },
                Slot::Passivated(bytes) => (Some(bytes.clone()), Recovery::Passivation, envelope),
            },
            Entry::Vacant(_) => (None, Recovery::Nothing, envelope),
        };
        self.replace(entry, key, recovered, recovery, envelope)
    }

    /// Dead-letters the message a `DropOldest` mailbox evicted to make room.
    fn evicted(&self, key: &E::Key, sent: Sent<Envelope<E>>) {
        if let Sent::Evicted(envelope) = sent {
            if let Some(letter) = envelope.dead_letter(
                E::KIND,
                key.to_string(),
                "evicted: the mailbox was full and its kind's overflow policy is DropOldest"
                    .to_owned(),
            ) {
                self.inner.dead_letters.record(letter);
            }
        }
    }

    /// Installs a new activation of `key` in `entry`, queues `envelope` in it, and starts it.
    #[allow(clippy::result_large_err)]
    fn replace(
        &self,
        entry: Entry<'_, E::Key, Slot<E>>,
        key: &E::Key,
        recovered: Option<Bytes>,
        recovery: Recovery,
        envelope: Envelope<E>,
    ) -> Result<(), (Refusal, Envelope<E>)> {
        let not_running = Refusal::KindNotRunning { kind: E::KIND };
        let Some(runtime) = self
            .inner
            .runtime
            .clone()
            .or_else(crate::concurrency::current)
        else {
            return Err((not_running, envelope));
        };
        // A kind missing from the running tree refuses at once instead of accepting a message
        // no incarnation could ever handle.
        if !self.inner.supervisor.is_running() {
            return Err((not_running, envelope));
        }
        let cell = Arc::new(EntityCell {
            checkpoint: Mutex::new(recovered),
            last_active: AtomicU64::new(clock::now_millis()),
            recovery,
        });
        let activation = self.inner.activations.fetch_add(1, Ordering::Relaxed);
        let worker = EntityWorker {
            inner: self.inner.clone(),
            key: key.clone(),
            cell: cell.clone(),
        };
        let start = Start::worker_with_mailbox(
            move || worker.clone(),
            self.inner.config.mailbox_capacity,
            self.inner.config.overflow,
        );
        // The id is unique per activation: a passivating incarnation may still be stopping when
        // the next one starts.
        let spec = ChildSpec::new(format!("{key}@{activation}"), start)
            .restart(Restart::Transient)
            .shutdown(garrison_supervisor::Shutdown::Timeout(Duration::from_secs(
                5,
            )))
            .attributes(GameAttributes {
                session_id: None,
                zone: self.inner.config.zone.clone(),
                entity_kind: Some(Arc::from(E::KIND)),
                entity_key: Some(Arc::from(key.to_string())),
            });
        let Some(handle) = spec.handle::<Envelope<E>>() else {
            return Err((not_running, envelope));
        };
        handle.on_undelivered(undelivered(
            self.inner.dead_letters.clone(),
            key.to_string(),
            &self.inner.config,
        ));
        let envelope = match handle.send(envelope) {
            Ok(_) => None,
            Err(error) => Some(error.into_inner()),
        };
        if let Some(envelope) = envelope {
            // A mailbox of capacity zero cannot hold even the first message.
            return Err((Refusal::MailboxFull, envelope));
        }
        entry.insert(Slot::Active {
            handle: handle.clone(),
            cell,
        });
        self.ensure_sweeper(&runtime);
        let entities = self.clone();
        let key = key.clone();
        runtime.spawn(async move {
            let Err(error) = entities.inner.supervisor.start_child(spec).await else {
                return;
            };
            match error {
                // The worker reported its failed activation (log, span, quarantine) and the
                // supervisor handed what was queued to the dead letters.
                garrison_supervisor::Error::StartFailed { .. } => {}
                // The kind stopped meanwhile, or is at its limit: the activation never ran.
                error => {
                    tracing::warn!(
                        game.entity.kind = E::KIND,
                        game.entity.key = %key,
                        %error,
                        "entity activation could not start"
                    );
                    handle.close(format!("the activation could not start: {error}"));
                }
            }
            // Forget this activation so the next message tries again.
            entities.inner.map.remove_if(&key, |_, slot| {
                matches!(slot, Slot::Active { handle: current, .. } if current.same_child(&handle))
            });
        });
        Ok(())
    }

    /// Starts the passivation sweeper the first time an entity activates, if the kind passivates.
    fn ensure_sweeper(&self, runtime: &tokio::runtime::Handle) {
        let Some(timeout) = self.inner.config.passivate_after else {
            return;
        };
        self.inner.sweeper.get_or_init(|| {
            let weak: Weak<Inner<E>> = Arc::downgrade(&self.inner);
            let period = (timeout / 4).max(Duration::from_millis(5));
            runtime.spawn(async move {
                let timeout_ms = timeout.as_millis() as u64;
                loop {
                    tokio::time::sleep(period).await;
                    let Some(inner) = weak.upgrade() else {
                        return;
                    };
                    let now = clock::now_millis();
                    for slot in inner.map.iter() {
                        if let Slot::Active { handle, cell } = slot.value() {
                            if now.saturating_sub(cell.last_active.load(Ordering::Relaxed))
                                >= timeout_ms
                            {
                                // A full mailbox means the entity is busy, not idle.
                                let _ = handle.send(Envelope::Passivate);
                            }
                        }
                    }
                }
            });
        });
    }

    /// Whether entity `key` has a live (or starting) incarnation.
    pub fn is_active(&self, key: &E::Key) -> bool {
        self.inner
            .map
            .get(key)
            .is_some_and(|slot| matches!(&*slot, Slot::Active { .. }))
    }

    /// The snapshot a passivated entity `key` is kept as, if it is passivated.
    pub fn passivated_snapshot(&self, key: &E::Key) -> Option<Bytes> {
        self.inner.map.get(key).and_then(|slot| match &*slot {
            Slot::Passivated(bytes) => Some(bytes.clone()),
            Slot::Active { .. } => None,
        })
    }

    /// Registers entity `key` as passivated with `snapshot`, without running it: it activates
    /// from the snapshot on its first message (loading a saved world, or pre-registering).
    pub fn register_passivated(&self, key: E::Key, snapshot: Bytes) {
        self.inner
            .map
            .entry(key)
            .or_insert(Slot::Passivated(snapshot));
    }

    /// Entities known to the registry, active or passivated.
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Whether the registry is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.map.is_empty()
    }

    /// The accepted messages of this kind that were not handled (each crashed its entity, or
    /// was still queued when its entity was given up on, failed to activate, or stopped).
    pub fn dead_letters(&self) -> &DeadLetters {
        &self.inner.dead_letters
    }

    /// The snapshots entities of this kind could not be activated from, oldest first (bounded
    /// to [`QUARANTINE_CAPACITY`](crate::QUARANTINE_CAPACITY)).
    pub fn quarantined(&self) -> Vec<Quarantined> {
        self.inner.quarantine.snapshot()
    }

    /// How many older quarantined snapshots were dropped to stay within the bound.
    pub fn quarantine_dropped(&self) -> u64 {
        self.inner.quarantine.dropped()
    }

    /// Messages waiting in entity `key`'s mailbox (0 when it is not active).
    pub fn mailbox_depth(&self, key: &E::Key) -> usize {
        self.inner.map.get(key).map_or(0, |slot| match &*slot {
            Slot::Active { handle, .. } => handle.depth(),
            Slot::Passivated(_) => 0,
        })
    }
}

/// The undelivered hook of one activation's mailbox: what is still queued when it closes for
/// good becomes dead letters, each saying what became of the entity.
fn undelivered<E: Entity>(
    dead_letters: Arc<DeadLetters>,
    key: String,
    config: &KindConfig,
) -> impl Fn(Envelope<E>, &MailboxClosed) + Send + Sync + 'static {
    let (max_restarts, period) = (config.max_restarts, config.restart_period);
    move |envelope, why| {
        let reason = match why {
            MailboxClosed::GaveUp(last) => format!(
                "not delivered: the entity crashed more than {max_restarts} times in \
                 {period:?} and was given up on (last: {last})"
            ),
            MailboxClosed::Exited(garrison_supervisor::ExitReason::Abandoned(reason)) => {
                format!("not delivered: {reason}")
            }
            MailboxClosed::Exited(exit) => format!("not delivered: the entity ended ({exit})"),
            MailboxClosed::Terminated => "not delivered: the entity was terminated".to_owned(),
            MailboxClosed::Shutdown => "not delivered: the entity's kind stopped".to_owned(),
            MailboxClosed::ByHandle(reason) => format!("not delivered: {reason}"),
            other => format!("not delivered: {other}"),
        };
        if let Some(letter) = envelope.dead_letter(E::KIND, key.clone(), reason) {
            dead_letters.record(letter);
        }
    }
}

/// A stable address of one entity: its kind and key. Valid whether the entity is active,
/// passivated, or restarting.
pub struct EntityRef<E: Entity> {
    entities: Entities<E>,
    key: E::Key,
}

impl<E: Entity> Clone for EntityRef<E> {
    fn clone(&self) -> Self {
        EntityRef {
            entities: self.entities.clone(),
            key: self.key.clone(),
        }
    }
}

impl<E: Entity> fmt::Debug for EntityRef<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntityRef({} {})", E::KIND, self.key)
    }
}

impl<E: Entity> EntityRef<E> {
    /// The entity's key.
    pub fn key(&self) -> &E::Key {
        &self.key
    }

    /// Sends a message (see [`Entities::send`]).
    ///
    /// # Errors
    /// As [`Entities::send`].
    pub fn send(&self, message: E::Message) -> Result<(), Refused<E::Message>> {
        self.entities.send(&self.key, message)
    }
}
