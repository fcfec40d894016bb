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
    Durability, DurabilityStats, Entity, EntityMessage, Error, KindConfig, clock,
    dead_letter::DeadLetters,
    durable::{Durable, Saved},
    envelope::Envelope,
    host::{EntityCell, EntityWorker, KindHost, Recovery},
    origin::{SessionId, current_origin},
    ownership::{Departure, DepartureKind, HandOffJob, HandOffReport, Lease},
    quarantine::{Quarantine, Quarantined},
    refusal::{Refusal, Refused},
    store::StoreError,
    telemetry,
};

/// A key's entry: its live activation's mailbox handle, or the snapshot it passivated to.
enum Slot<E: Entity> {
    Active {
        handle: ChildRef<Envelope<E>>,
        cell: Arc<EntityCell<E>>,
    },
    Passivated(Bytes),
}

/// One kind's registry: private to this module, which owns its invariants.
struct Inner<E: Entity> {
    /// The module serving the kind; set once, by `serve`.
    module: OnceLock<E>,
    config: KindConfig,
    map: DashMap<E::Key, Slot<E>>,
    dead_letters: Arc<DeadLetters>,
    quarantine: Quarantine,
    spec: SupervisorSpec,
    supervisor: SupervisorRef,
    activations: AtomicU64,
    sweeper: OnceLock<()>,
    /// The runtime entities run on (see `concurrency`): activations start there whoever sends.
    runtime: Option<tokio::runtime::Handle>,
    /// The kind's timer counters (see `timer`).
    timers: Arc<crate::timer::TimerCounters>,
    /// Where its state goes beyond memory, if anywhere.
    durable: Option<Arc<Durable<E>>>,
    /// The store generation of each activation, by key, if the kind fences per entity.
    fence: std::sync::RwLock<Option<Arc<Fence<E>>>>,
    /// What it measures for operators (see `stats`).
    stats: crate::stats::KindStats,
    /// Its overload limit, if configured (`KindConfig::overload`).
    limit: Option<crate::overload::AdaptiveLimit>,
    /// The node's lease on the kind's entities, if a fleet placed them ([`Entities::lease`]).
    lease: OnceLock<Lease>,
    /// Told when an active entity leaves this process ([`Entities::on_departure`]).
    departures: OnceLock<Arc<Departures<E>>>,
    /// The event loops of the gateway hosting the kind, if one does
    /// ([`GatewayBuilder::hosts`](crate::gateway::GatewayBuilder::hosts)).
    hosts: std::sync::RwLock<Option<crate::placement::Opening>>,
}

/// What gives an activation its store generation, or refuses it ([`Entities::fence_by`]).
type Fence<E> = dyn Fn(&<E as Entity>::Key) -> Option<u64> + Send + Sync;

/// What hears of an active entity leaving this process ([`Entities::on_departure`]).
type Departures<E> = dyn Fn(&<E as Entity>::Key, Departure) + Send + Sync;

/// All entities of kind `E`: the registry, and the handle to send them messages.
pub struct Entities<E: Entity> {
    inner: Arc<Inner<E>>,
}

/// A kind's registry without keeping it alive (the metrics read kinds through it).
pub(crate) struct WeakEntities<E: Entity>(Weak<Inner<E>>);

impl<E: Entity> Clone for WeakEntities<E> {
    fn clone(&self) -> Self {
        WeakEntities(self.0.clone())
    }
}

impl<E: Entity> WeakEntities<E> {
    pub(crate) fn upgrade(&self) -> Option<Entities<E>> {
        self.0.upgrade().map(|inner| Entities { inner })
    }
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

impl<E: Entity> Entities<E> {
    /// The registry for kind `E`, served by `module`: [`Entities::declare`] and
    /// [`Entities::serve`] in one call. Create it on the tokio runtime entities should run on:
    /// activations start there, whichever thread sends.
    ///
    /// # Errors
    /// As [`Entities::declare`].
    pub fn new(module: E, config: KindConfig) -> Result<Self, Error> {
        let entities = Entities::declare(config)?;
        entities.serve(module)?;
        Ok(entities)
    }

    /// Declares kind `E` without its module yet, so other kinds' modules can hold this
    /// registry's handle before it is served (a player that knows the rooms, rooms that know the
    /// players): declare every kind, then serve each with modules holding the others' handles.
    /// Sending to a kind declared but not served is refused ([`Refusal::KindNotServed`]).
    ///
    /// # Errors
    /// [`Error::InvalidKindConfig`] when the configuration cannot make a supervisor (a zero
    /// restart period), or asks for an overload limit off a tokio runtime (nothing could
    /// recompute it).
    pub fn declare(config: KindConfig) -> Result<Self, Error> {
        crate::stats::install_panic_hook();
        let spec = SupervisorBuilder::dynamic(E::KIND, config.max_active)
            .intensity(config.max_restarts, config.restart_period)
            .crash_loop(CrashLoop::RemoveChild)
            .build()
            .map_err(|error| Error::InvalidKindConfig {
                kind: E::KIND,
                reason: error.to_string(),
            })?;
        let supervisor = spec.handle();
        let durable = match &config.durability {
            Durability::Memory => None,
            Durability::WriteBehind { store, max_lag } => Some((store, false, *max_lag)),
            Durability::WriteThrough { store } => Some((store, true, Duration::ZERO)),
        }
        .map(|(store, through, max_lag)| {
            Arc::new(Durable::new(
                store.clone(),
                through,
                max_lag,
                config.max_pending_writes,
            ))
        });
        let runtime = crate::concurrency::current();
        let limit = match (&config.overload, &runtime) {
            (None, _) => None,
            (Some(overload), Some(_)) => Some(crate::overload::AdaptiveLimit::permits(
                E::KIND,
                overload.clone(),
            )),
            (Some(_), None) => {
                return Err(Error::InvalidKindConfig {
                    kind: E::KIND,
                    reason: "an overload limit is recomputed on the tokio runtime the kind is \
                             declared on; declare it on one"
                        .to_owned(),
                });
            }
        };
        let entities = Entities {
            inner: Arc::new(Inner {
                module: OnceLock::new(),
                config,
                map: DashMap::new(),
                dead_letters: Arc::new(DeadLetters::default()),
                quarantine: Quarantine::default(),
                spec,
                supervisor,
                activations: AtomicU64::new(0),
                sweeper: OnceLock::new(),
                runtime,
                timers: Arc::default(),
                durable,
                fence: std::sync::RwLock::new(None),
                stats: crate::stats::KindStats::default(),
                limit,
                lease: OnceLock::new(),
                departures: OnceLock::new(),
                hosts: std::sync::RwLock::new(None),
            }),
        };
        if let (Some(limit), Some(runtime)) = (&entities.inner.limit, &entities.inner.runtime) {
            limit.watch(&entities).start_on(runtime);
        }
        Ok(entities)
    }

    /// The kind's overload limit ([`KindConfig::overload`]), to watch other kinds' latency as
    /// well (a matchmaker shedding joins while the rooms run late) or to export it
    /// ([`Metrics::limit`](crate::metrics::Metrics::limit)).
    pub fn overload_limit(&self) -> Option<&crate::overload::AdaptiveLimit> {
        self.inner.limit.as_ref()
    }

    /// Serves the kind with `module`, which every entity of the kind is handled by.
    ///
    /// # Errors
    /// [`Error::AlreadyServed`] when the kind is served already (the first module stays).
    pub fn serve(&self, module: E) -> Result<(), Error> {
        self.inner
            .module
            .set(module)
            .map_err(|_| Error::AlreadyServed { kind: E::KIND })
    }

    /// Starts the kind's next activations on `loops` (a gateway hosting it), in turn; the
    /// last gateway to host the kind is the one its activations take.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn host_on(&self, loops: crate::placement::Opening) {
        *self
            .inner
            .hosts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(loops);
    }

    /// Whether the kind is served.
    pub fn is_served(&self) -> bool {
        self.inner.module.get().is_some()
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
    /// is not running or not served ([`Refusal::KindNotRunning`], [`Refusal::KindNotServed`]).
    pub fn send(&self, key: &E::Key, message: E::Message) -> Result<(), Refused<E::Message>> {
        self.deliver(key, message, None)
    }

    /// Sends entity `key` the request `request(reply)` and waits for its answer, at most
    /// `timeout`: `players.call(&7, PlayerMsg::Count, Duration::from_secs(1)).await?`, the
    /// message's variant holding the [`Reply`](crate::Reply) its handler answers.
    ///
    /// # Errors
    /// [`CallError::Refused`] when the request is not accepted (as [`Entities::send`]),
    /// [`CallError::NoReply`] when the entity drops it unanswered (it crashed on it: the request
    /// is then among the dead letters), [`CallError::Timeout`].
    ///
    /// [`CallError::Refused`]: crate::CallError::Refused
    /// [`CallError::NoReply`]: crate::CallError::NoReply
    /// [`CallError::Timeout`]: crate::CallError::Timeout
    pub async fn call<R>(
        &self,
        key: &E::Key,
        request: impl FnOnce(crate::Reply<R>) -> E::Message,
        timeout: Duration,
    ) -> Result<R, crate::CallError> {
        let (reply, receiver) = crate::Reply::channel();
        self.send(key, request(reply))
            .map_err(|refused| crate::CallError::Refused(refused.reason))?;
        crate::call::wait(E::KIND, receiver, timeout).await
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

    /// Sends for a session through its binding (`Session::send`): the session hop of a player's
    /// message, gateway frame -> session -> entity, with its own span.
    pub(crate) fn send_from(
        &self,
        session: SessionId,
        key: &E::Key,
        message: E::Message,
    ) -> Result<(), Refused<E::Message>> {
        let span = if telemetry::unsampled() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "garrison.session.send",
                otel.name = %format_args!("session.send {}", E::KIND),
                game.session.id = session.0,
                game.event.type = message.event_type(),
                game.world.zone = self.inner.config.zone.as_deref(),
                game.entity.kind = E::KIND,
                game.entity.key = %key,
                refused = tracing::field::Empty,
            )
        };
        let _entered = span.enter();
        self.deliver(key, message, Some(session))
            .inspect_err(|refused| {
                span.record("refused", tracing::field::display(&refused.reason));
            })
    }

    fn deliver(
        &self,
        key: &E::Key,
        message: E::Message,
        session: Option<SessionId>,
    ) -> Result<(), Refused<E::Message>> {
        self.deliver_from(key, message, session, current_origin())
    }

    /// Delivers a session event to entity `key`. A player arriving (`activate`) is a reason to
    /// run its entity; a player leaving reaches only an entity the registry knows (active or
    /// passivated): one that ended (a finished match) is not activated again to hear it. No
    /// frame caused the event, so it carries no origin.
    pub(crate) fn send_event(
        &self,
        session: SessionId,
        key: &E::Key,
        message: E::Message,
        activate: bool,
    ) -> Result<(), Refused<E::Message>> {
        if !activate && !self.inner.map.contains_key(key) {
            return Ok(());
        }
        // A session event is never shed: the entity must learn who left.
        self.enqueue(key, message, Some(session), None, None)
    }

    /// Delivers with an explicit origin: an entity forwarding the request it is handling
    /// (`EntityContext::forward`).
    pub(crate) fn deliver_from(
        &self,
        key: &E::Key,
        message: E::Message,
        session: Option<SessionId>,
        origin: Option<crate::origin::Origin>,
    ) -> Result<(), Refused<E::Message>> {
        let permit = match &self.inner.limit {
            None => None,
            Some(limit) => match limit.acquire(message.priority(), message.event_type()) {
                Ok(permit) => Some(permit),
                Err(reason) => return Err(Refused::new(reason, message)),
            },
        };
        self.enqueue(key, message, session, origin, permit)
    }

    fn enqueue(
        &self,
        key: &E::Key,
        message: E::Message,
        session: Option<SessionId>,
        origin: Option<crate::origin::Origin>,
        permit: Option<crate::overload::Permit>,
    ) -> Result<(), Refused<E::Message>> {
        let envelope = Envelope::Message {
            message,
            parent: tracing::Span::current(),
            session,
            sampling: telemetry::current_sampling(),
            origin,
            queued: self.inner.stats.timed().then(std::time::Instant::now),
            permit,
        };
        self.push(key, envelope)
            .map_err(|(reason, envelope)| Refused::new(reason, envelope.into_message()))
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
                        self.evicted(key, handle, sent);
                        return Ok(());
                    }
                    Err(SendError::Full(envelope)) => {
                        return Err((Refusal::MailboxFull { kind: E::KIND }, envelope));
                    }
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
                        self.evicted(key, handle, sent);
                        return Ok(());
                    }
                    Err(SendError::Full(envelope)) => {
                        return Err((Refusal::MailboxFull { kind: E::KIND }, envelope));
                    }
                    Err(SendError::Closed(envelope)) => {
                        let carried = cell.saved().carried();
                        let recovery = match carried.snapshot {
                            Some(_) => Recovery::Crash,
                            None => Recovery::Nothing,
                        };
                        (carried, recovery, envelope)
                    }
                },
                Slot::Passivated(bytes) => (
                    Saved::from_snapshot(Some(bytes.clone())),
                    Recovery::Passivation,
                    envelope,
                ),
            },
            Entry::Vacant(_) => (Saved::default(), Recovery::Nothing, envelope),
        };
        self.replace(entry, key, recovered, recovery, envelope)
    }

    /// Dead-letters the message a `DropOldest` mailbox evicted to make room (an evicted timer
    /// tick is counted as skipped).
    fn evicted(&self, key: &E::Key, handle: &ChildRef<Envelope<E>>, sent: Sent<Envelope<E>>) {
        if let Sent::Evicted(envelope) = sent {
            let (letters, skipped) = (&self.inner.dead_letters, &self.inner.timers.skipped);
            crate::envelope::evicted(envelope, handle, key, letters, skipped);
        }
    }

    /// Installs a new activation of `key` in `entry`, queues `envelope` in it, and starts it.
    #[allow(clippy::result_large_err)]
    fn replace(
        &self,
        entry: Entry<'_, E::Key, Slot<E>>,
        key: &E::Key,
        recovered: Saved,
        recovery: Recovery,
        envelope: Envelope<E>,
    ) -> Result<(), (Refusal, Envelope<E>)> {
        if self.inner.module.get().is_none() {
            return Err((Refusal::KindNotServed { kind: E::KIND }, envelope));
        }
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
        let fence = self
            .inner
            .fence
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let fence = match fence.map(|fence| fence(key)) {
            None => None,
            Some(Some(generation)) => Some(generation),
            // Its fleet placed the key on another node: no activation here.
            Some(None) => {
                return Err((
                    Refusal::NotOwned {
                        kind: E::KIND,
                        key: key.to_string(),
                    },
                    envelope,
                ));
            }
        };
        let now = clock::now_millis();
        let cell = Arc::new(EntityCell {
            saved: Mutex::new(recovered),
            last_active: AtomicU64::new(now),
            last_handled: AtomicU64::new(now),
            recovery,
            timers: crate::timer::TimerShared::default(),
            fence,
        });
        let activation = self.inner.activations.fetch_add(1, Ordering::Relaxed);
        let worker = EntityWorker {
            kind: self.inner.clone(),
            key: key.clone(),
            cell: cell.clone(),
        };
        let mut start = Start::worker_with_mailbox(
            move || worker.clone(),
            self.inner.config.mailbox_capacity,
            self.inner.config.overflow,
        );
        let session_loop = match self.inner.config.placement {
            crate::Placement::SessionLoop => crate::placement::current_loop(),
            crate::Placement::Tree => None,
        };
        let placed = session_loop.or_else(|| {
            self.inner
                .hosts
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .and_then(|hosts| hosts.pick(activation))
        });
        if let Some((event_loop, keep_running)) = placed {
            start = start.on_runtime(event_loop, keep_running);
        }
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
            return Err((Refusal::MailboxFull { kind: E::KIND }, envelope));
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
                        if let Slot::Active { handle, cell } = slot.value()
                            && now.saturating_sub(cell.last_active.load(Ordering::Relaxed))
                                >= timeout_ms
                        {
                            // A full mailbox means the entity is busy, not idle.
                            let _ = handle.send(Envelope::Passivate);
                        }
                    }
                }
            });
        });
    }

    /// Runs every entity of this kind that has a record in its store, without a message (each
    /// recovers its state, replays its log, and runs [`Entity::started`]): for kinds that must
    /// run after a restart whether or not a message comes (a room's clock). Entities already
    /// running are left alone. Returns how many were asked to run; a stored key that does not
    /// parse as this kind's key is logged and skipped.
    ///
    /// # Errors
    /// The store's error when it cannot list the kind; a kind without a store has nothing to
    /// recover (`Ok(0)`).
    pub async fn recover_stored(&self) -> Result<usize, StoreError>
    where
        E::Key: std::str::FromStr,
    {
        self.recover_stored_where(|_| true).await
    }

    /// As [`Entities::recover_stored`], for the stored keys `which` picks only (a fleet node
    /// running the entities of the shards it just gained).
    ///
    /// # Errors
    /// As [`Entities::recover_stored`].
    pub async fn recover_stored_where(
        &self,
        which: impl Fn(&E::Key) -> bool,
    ) -> Result<usize, StoreError>
    where
        E::Key: std::str::FromStr,
    {
        let Some(durable) = &self.inner.durable else {
            return Ok(0);
        };
        let keys = durable.store.list(E::KIND).await?;
        let mut woken = 0;
        for text in keys {
            let Ok(key) = text.parse::<E::Key>() else {
                tracing::warn!(
                    game.entity.kind = E::KIND,
                    key = %text,
                    "a stored record's key does not parse as this kind's key: left in the store"
                );
                continue;
            };
            if !which(&key) {
                continue;
            }
            match self.push(&key, Envelope::Wake) {
                Ok(()) => woken += 1,
                Err((reason, _)) => tracing::warn!(
                    game.entity.kind = E::KIND,
                    game.entity.key = %key,
                    %reason,
                    "a stored entity could not be started"
                ),
            }
        }
        Ok(woken)
    }

    /// Waits until every checkpoint and log entry of this kind is in its store, at most
    /// `timeout` (a graceful stop calls it last); returns whether everything got there. A kind
    /// without a store is always flushed.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let Some(durable) = &self.inner.durable else {
            return true;
        };
        // A change the full write-behind set did not take is queued now.
        for slot in self.inner.map.iter() {
            if let Slot::Active { cell, .. } = slot.value() {
                let unqueued = cell.saved().unqueued;
                if unqueued {
                    durable.mark_dirty(slot.key(), cell, self.inner.runtime.as_ref(), true);
                }
            }
        }
        durable.flush(timeout).await
    }

    /// Waits until no message waits in any active entity's mailbox, at most `timeout`; returns
    /// whether it got there. A graceful stop calls it once nothing sends any more (the gateway
    /// is shut), so the messages already accepted are handled rather than dead-lettered when
    /// the tree stops. A clock's ticks count too: an entity with a timer is drained between two
    /// of them.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let queued = self.inner.map.iter().any(|slot| match slot.value() {
                Slot::Active { handle, .. } => handle.depth() > 0,
                Slot::Passivated(_) => false,
            });
            if !queued {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // Mailboxes have no "empty" signal to wait on; polled with a deadline.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// What this kind's durability has done, when it has a store.
    pub fn durability(&self) -> Option<DurabilityStats> {
        self.inner.durable.as_ref().map(|durable| durable.stats())
    }

    /// Sets the generation (fencing token) this node's writes for the kind carry: a store
    /// refuses a write whose generation is below the one it holds for the entity, so a node
    /// that lost an entity to another cannot overwrite it. A single node leaves it at 0.
    pub fn set_store_generation(&self, generation: u64) {
        if let Some(durable) = &self.inner.durable {
            durable.set_generation(generation);
        }
    }

    /// Fences each activation on its own: `generation(key)`, asked when entity `key`
    /// activates, is the generation all that activation's writes carry (until it passivates,
    /// ends or is given up on; a crash restart keeps it), instead of the kind's
    /// ([`set_store_generation`](Entities::set_store_generation)); `None` refuses the
    /// activation ([`Refusal::NotOwned`]: the key is another node's). A fleet passes the
    /// fencing token of the key's shard as this node owns it: an activation that outlives the
    /// node's ownership keeps the old token, and its writes are refused once the new owner has
    /// written with the newer one. Replaces an earlier `fence_by`; activations already running
    /// keep theirs.
    pub fn fence_by(&self, generation: impl Fn(&E::Key) -> Option<u64> + Send + Sync + 'static) {
        *self
            .inner
            .fence
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(generation));
    }

    /// Puts the kind's entities under `lease` (a fleet node's, [`Lease`]): before each message
    /// an entity handles, the lease is checked, and once it has lapsed the message is
    /// dead-lettered, the activation lapses (forgotten here, its queue dead-lettered, told to
    /// [`Entities::on_departure`]) and nothing of it runs any more. The first lease set stays.
    pub fn lease(&self, lease: Lease) {
        let _ = self.inner.lease.set(lease);
    }

    /// Tells `hook` of every active entity that leaves this process by
    /// [`hand_off`](Entities::hand_off), [`release`](Entities::release) or a lapsed
    /// [`lease`](Entities::lease), with its generation and when it last handled a message (a
    /// fleet's activation log). The first hook set stays.
    pub fn on_departure(&self, hook: impl Fn(&E::Key, Departure) + Send + Sync + 'static) {
        let _ = self.inner.departures.set(Arc::new(hook));
    }

    /// Lets go of every entity of this kind whose key `which` picks, on this process only (a
    /// fleet node whose shards moved away): each is forgotten here, passivated or active; an
    /// active one's mailbox closes at once, its queued messages dead-lettered with `reason`,
    /// and its incarnation stops after the message it is handling. Nothing is written for it
    /// beyond what it had queued for its store (its new owner reads the store, and fencing
    /// refuses what comes too late). A later message for the key activates it afresh from its
    /// store. Returns how many were let go.
    pub fn release(&self, which: impl Fn(&E::Key) -> bool, reason: &str) -> usize {
        let keys: Vec<E::Key> = self
            .inner
            .map
            .iter()
            .filter(|entry| which(entry.key()))
            .map(|entry| entry.key().clone())
            .collect();
        let released = keys
            .iter()
            .filter(|key| self.release_one(key, reason))
            .count();
        if released > 0 {
            tracing::info!(
                game.entity.kind = E::KIND,
                released,
                "entities released: {reason}"
            );
        }
        released
    }

    /// Forgets `key` here (see [`Entities::release`]); returns whether it was known.
    fn release_one(&self, key: &E::Key, reason: &str) -> bool {
        let Some((_, slot)) = self.inner.map.remove(key) else {
            return false;
        };
        if let Slot::Active { handle, cell } = slot {
            // Its incarnation (running, or still starting) stops once it sees the mailbox
            // closed.
            handle.close(format!("released: {reason}"));
            self.inner.departed(key, &cell, DepartureKind::Released);
        }
        true
    }

    /// Hands every entity of this kind whose key `which` picks to its new owner, on this
    /// process only (a fleet node whose shards moved to a live peer). Each active entity first
    /// handles what was queued for it before the hand-off (its node still owns it until the new
    /// owner hears the hand-off is done), then checkpoints, waits until the store has that
    /// state, sends what was queued behind the hand-off on with `forward` (what `forward`
    /// refuses is dead-lettered with its reason), is told to
    /// [`on_departure`](Entities::on_departure) and leaves; a passivated one is forgotten here
    /// (its snapshot was queued for the store when it passivated), and the hand-off waits for
    /// that snapshot to be written. Waits at most `timeout`: an entity that has not left by
    /// then is released instead, and it and any snapshot not yet written are counted as
    /// unconfirmed (a fleet then does not tell the new owner, which waits before it reads the
    /// store; late writes are fenced once the new owner has written).
    ///
    /// A later message for a handed-off key activates it here again only if the kind's
    /// [`fence_by`](Entities::fence_by) lets it (a fleet's refuses keys it does not own).
    pub async fn hand_off(
        &self,
        which: impl Fn(&E::Key) -> bool,
        forward: impl Fn(&E::Key, E::Message) -> Result<(), String> + Send + Sync + 'static,
        timeout: Duration,
    ) -> HandOffReport {
        let deadline = tokio::time::Instant::now() + timeout;
        let forward: Arc<crate::ownership::Forward<E>> = Arc::new(forward);
        let mut report = HandOffReport::default();
        let keys: Vec<E::Key> = self
            .inner
            .map
            .iter()
            .filter(|entry| which(entry.key()))
            .map(|entry| entry.key().clone())
            .collect();
        let mut waiting = Vec::new();
        // Passivated entities forgotten here: their snapshots may still wait for the store.
        let mut snapshots = Vec::new();
        for key in keys {
            let handle = match self.inner.map.get(&key).map(|slot| match &*slot {
                Slot::Active { handle, .. } => Some(handle.clone()),
                Slot::Passivated(_) => None,
            }) {
                // Gone meanwhile (it ended, or passivated and was released).
                None => continue,
                Some(Some(handle)) => handle,
                Some(None) => {
                    let passivated = self
                        .inner
                        .map
                        .remove_if(&key, |_, slot| matches!(slot, Slot::Passivated(_)));
                    if passivated.is_some() {
                        report.passivated += 1;
                        snapshots.push(key);
                    }
                    continue;
                }
            };
            let (done, answer) = tokio::sync::oneshot::channel();
            let mut job = Envelope::HandOff(HandOffJob {
                forward: forward.clone(),
                done,
            });
            loop {
                match handle.send(job) {
                    Ok(sent) => {
                        self.evicted(&key, &handle, sent);
                        waiting.push((key, answer));
                        break;
                    }
                    Err(SendError::Full(back)) if tokio::time::Instant::now() < deadline => {
                        // A full mailbox drains at handling speed; the hand-off queues behind it
                        // as soon as there is room (a back-off, not a wait for an event).
                        job = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => {
                        report.unconfirmed += 1;
                        self.release_one(&key, "its hand-off could not be queued in time");
                        break;
                    }
                }
            }
        }
        for (key, answer) in waiting {
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(done)) => {
                    report.handed_off += 1;
                    report.forwarded += done.forwarded;
                    report.dead_lettered += done.dead_lettered;
                    report.unconfirmed += usize::from(!done.stored);
                }
                // Its incarnation was gone before it got there, or it is still busy.
                Ok(Err(_)) | Err(_) => {
                    report.unconfirmed += 1;
                    self.release_one(&key, "it did not hand off in time");
                }
            }
        }
        // The active ones wrote through as they left; only the snapshots are waited for (not
        // the whole kind's writes, which on a busy node are never all done at once).
        if let Some(durable) = &self.inner.durable
            && !snapshots.is_empty()
        {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            report.unconfirmed += durable.flush_keys(&snapshots, left).await;
        }
        if report != HandOffReport::default() {
            tracing::info!(
                game.entity.kind = E::KIND,
                handed_off = report.handed_off,
                passivated = report.passivated,
                forwarded = report.forwarded,
                dead_lettered = report.dead_lettered,
                unconfirmed = report.unconfirmed,
                "entities handed off"
            );
        }
        report
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

    /// Timer ticks of this kind's entities that were skipped because the entity's mailbox was
    /// full (or evicted from a `DropOldest` mailbox); see `docs/runtime-semantics.md`, "Timers".
    pub fn timer_ticks_skipped(&self) -> u64 {
        self.inner.timers.skipped.load(Ordering::Relaxed)
    }

    /// Timer ticks of this kind's entities delivered more than one period after they were due
    /// (the runtime was busy).
    pub fn timer_ticks_late(&self) -> u64 {
        self.inner.timers.late.load(Ordering::Relaxed)
    }

    /// Timers armed now over all this kind's entities.
    pub fn timers_armed(&self) -> u64 {
        self.inner.timers.armed.load(Ordering::Relaxed)
    }

    /// What this kind's entities crashed of so far, most frequent first: one line per
    /// fingerprint (see [`CrashCause`](crate::CrashCause)), each followed by a restart (or, for a
    /// crash loop, a fresh activation on the next message).
    pub fn crash_causes(&self) -> Vec<crate::CrashCause> {
        self.inner.stats.causes()
    }

    /// This registry, without keeping it alive.
    pub(crate) fn downgrade(&self) -> WeakEntities<E> {
        WeakEntities(Arc::downgrade(&self.inner))
    }

    /// The kind's measurements, for the metrics registry.
    pub(crate) fn stats(&self) -> &crate::stats::KindStats {
        &self.inner.stats
    }

    /// Active entities and the messages waiting in their mailboxes, counted now.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))] // read by `metrics` only
    pub(crate) fn census(&self) -> (usize, usize, usize) {
        let (mut active, mut passivated, mut queued) = (0, 0, 0);
        for slot in self.inner.map.iter() {
            match slot.value() {
                Slot::Active { handle, .. } => {
                    active += 1;
                    queued += handle.depth();
                }
                Slot::Passivated(_) => passivated += 1,
            }
        }
        (active, passivated, queued)
    }

    /// How many entities of the kind were activated so far.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))] // read by `metrics` only
    pub(crate) fn activations(&self) -> u64 {
        self.inner.activations.load(Ordering::Relaxed)
    }

    /// Messages waiting in entity `key`'s mailbox (0 when it is not active).
    pub fn mailbox_depth(&self, key: &E::Key) -> usize {
        self.inner.map.get(key).map_or(0, |slot| match &*slot {
            Slot::Active { handle, .. } => handle.depth(),
            Slot::Passivated(_) => 0,
        })
    }
}

impl<E: Entity> Inner<E> {
    /// Tells the departure hook that the activation in `cell` left this process.
    fn departed(&self, key: &E::Key, cell: &EntityCell<E>, kind: DepartureKind) {
        if let Some(hook) = self.departures.get() {
            hook(
                key,
                Departure {
                    kind,
                    generation: cell.fence,
                    last_handled_unix_ms: crate::clock::unix_ms_of(
                        cell.last_handled.load(Ordering::Relaxed),
                    ),
                },
            );
        }
    }
}

impl<E: Entity> KindHost<E> for Inner<E> {
    fn module(&self) -> Option<&E> {
        self.module.get()
    }

    fn lease(&self) -> Option<&Lease> {
        self.lease.get()
    }

    fn leave(
        &self,
        key: &E::Key,
        mine: &ChildRef<Envelope<E>>,
        cell: &EntityCell<E>,
        kind: DepartureKind,
    ) -> Vec<Envelope<E>> {
        // Removed while holding the entry for writing: no push is in flight, and none reaches
        // this mailbox afterwards, so what it holds now is all it will ever hold.
        let removed = self
            .map
            .remove_if(
                key,
                |_, slot| matches!(slot, Slot::Active { handle, .. } if handle.same_child(mine)),
            )
            .is_some();
        let left = mine.close_taking();
        if removed {
            self.departed(key, cell, kind);
        }
        left
    }

    fn config(&self) -> &KindConfig {
        &self.config
    }

    fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    fn quarantine(&self) -> &Quarantine {
        &self.quarantine
    }

    fn timer_sink(&self) -> crate::timer::TimerSink {
        crate::timer::TimerSink {
            dead_letters: self.dead_letters.clone(),
            counters: self.timers.clone(),
        }
    }

    fn passivate(
        &self,
        key: &E::Key,
        mine: &ChildRef<Envelope<E>>,
        snapshot: Bytes,
        then: impl FnOnce(),
    ) -> bool {
        let Some(mut entry) = self.map.get_mut(key) else {
            return false;
        };
        let cell = match &*entry {
            Slot::Active { handle, cell } if handle.same_child(mine) => Arc::clone(cell),
            _ => return false,
        };
        // Holding the entry for writing: no push is in flight, so the depth is exact.
        if mine.depth() > 0 {
            return false;
        }
        *entry = Slot::Passivated(snapshot);
        then();
        drop(entry);
        self.departed(key, &cell, DepartureKind::Passivated);
        true
    }

    fn durable(&self) -> Option<&Arc<Durable<E>>> {
        self.durable.as_ref()
    }

    fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.as_ref()
    }

    fn stats(&self) -> &crate::stats::KindStats {
        &self.stats
    }

    fn end(&self, key: &E::Key, mine: &ChildRef<Envelope<E>>, then: impl FnOnce()) -> bool {
        // Removing holds the entry for writing: no push is in flight, so the depth is exact,
        // and `then` runs before any next activation can take the key.
        let mut then = Some(then);
        let removed = self.map.remove_if(key, |_, slot| {
            let mine = matches!(slot, Slot::Active { handle, .. } if handle.same_child(mine))
                && mine.depth() == 0;
            if mine && let Some(then) = then.take() {
                then();
            }
            mine
        });
        match removed {
            Some((key, Slot::Active { cell, .. })) => {
                self.departed(&key, &cell, DepartureKind::Stopped);
                true
            }
            Some(_) => true,
            None => false,
        }
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
        if let Some(letter) = envelope.dead_letter(key.clone(), reason) {
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

    /// Sends a request and waits for its answer (see [`Entities::call`]).
    ///
    /// # Errors
    /// As [`Entities::call`].
    pub async fn call<R>(
        &self,
        request: impl FnOnce(crate::Reply<R>) -> E::Message,
        timeout: Duration,
    ) -> Result<R, crate::CallError> {
        self.entities.call(&self.key, request, timeout).await
    }
}
