//! Runs one entity incarnation as a supervised worker: activation from the last checkpoint
//! (abandoned when it fails), one traced span per handled message, dead letters, checkpoints,
//! passivation and ending. What the host needs of its kind's registry is the `KindHost` trait;
//! the registry implements it and owns the entry swaps it asks for.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use futures_util::FutureExt;
use garrison_protocol::TraceContext;
use garrison_supervisor::{Abandon, ChildRef, HandlerError, Worker, WorkerContext};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    Activation, Checkpoint, Entity, EntityContext, EntityMessage, KindConfig, State, clock,
    dead_letter::{DeadLetter, DeadLetters},
    durable::{Durable, Saved},
    envelope::{Envelope, refuse},
    origin::SessionId,
    quarantine::{Quarantine, Quarantined},
    store::StoreError,
    telemetry::Sampling,
    timer::{TimerShared, TimerSink, Timers},
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

/// Why a message was not handled by an entity of a fleet whose node's lease lapsed.
const LAPSED: &str = "not handled: this node's lease on its fleet's entities has lapsed (another \
                      node may own the entity now)";

/// Shared by the incarnations of one activation: what it saved (its last checkpoint and the log
/// since) and when it last worked.
pub(crate) struct EntityCell<E: Entity> {
    pub(crate) saved: Mutex<Saved>,
    pub(crate) last_active: AtomicU64,
    /// When it last began to handle a message or a timer's tick (the coarse clock's
    /// milliseconds), for the departure a fleet logs.
    pub(crate) last_handled: AtomicU64,
    pub(crate) recovery: Recovery,
    /// Timer ids, and the timers kept across a crash (allocates nothing until one is kept).
    pub(crate) timers: TimerShared<E>,
    /// The store generation this activation's writes carry, when the kind fences per entity
    /// ([`Entities::fence_by`](crate::Entities::fence_by)): taken when it activates, so an
    /// activation that outlives its node's ownership keeps writing with the old token and is
    /// refused once the new owner has written. `None`: the kind's generation at each write.
    pub(crate) fence: Option<u64>,
}

/// What an incarnation needs of its kind: the module serving it, its settings and logs, and the
/// registry's entry swaps, which the registry performs because it owns the invariant that a key
/// reaches one live incarnation.
pub(crate) trait KindHost<E: Entity>: Send + Sync + 'static {
    /// The module serving the kind (activations only start once it is served).
    fn module(&self) -> Option<&E>;
    /// The node's lease on the kind's entities, if a fleet placed them.
    fn lease(&self) -> Option<&crate::ownership::Lease>;
    /// Takes the key's entry out if the activation behind `mine` still owns it (telling the
    /// departure hook it left, `kind`-wise), and closes its mailbox, returning what was still
    /// queued: an entity leaving this process (handed off, or lapsed with the lease).
    fn leave(
        &self,
        key: &E::Key,
        mine: &ChildRef<Envelope<E>>,
        cell: &EntityCell<E>,
        kind: crate::ownership::DepartureKind,
    ) -> Vec<Envelope<E>>;
    fn config(&self) -> &KindConfig;
    fn dead_letters(&self) -> &DeadLetters;
    fn quarantine(&self) -> &Quarantine;
    /// Where this kind's timer tasks report.
    fn timer_sink(&self) -> TimerSink;
    /// Replaces the key's entry with `snapshot` if the activation behind `mine` still owns it
    /// and no message waits in its mailbox, running `then` while it still holds the entry (so
    /// no next activation can start, and queue its own state for the store, before this one's
    /// last state is queued); returns whether it did.
    fn passivate(
        &self,
        key: &E::Key,
        mine: &ChildRef<Envelope<E>>,
        snapshot: Bytes,
        then: impl FnOnce(),
    ) -> bool;
    /// Removes the key's entry under the same conditions, running `then` likewise; returns
    /// whether it did.
    fn end(&self, key: &E::Key, mine: &ChildRef<Envelope<E>>, then: impl FnOnce()) -> bool;
    /// The kind's durability, when it writes to a store.
    fn durable(&self) -> Option<&Arc<Durable<E>>>;
    /// The runtime the kind's tasks run on.
    fn runtime(&self) -> Option<&tokio::runtime::Handle>;
    /// What the kind measures (see `stats`).
    fn stats(&self) -> &crate::stats::KindStats;
}

pub(crate) struct EntityWorker<E: Entity, K: KindHost<E>> {
    pub(crate) kind: Arc<K>,
    pub(crate) key: E::Key,
    pub(crate) cell: Arc<EntityCell<E>>,
}

impl<E: Entity, K: KindHost<E>> Clone for EntityWorker<E, K> {
    fn clone(&self) -> Self {
        EntityWorker {
            kind: self.kind.clone(),
            key: self.key.clone(),
            cell: self.cell.clone(),
        }
    }
}

pub(crate) struct Running<E: Entity> {
    state: E::State,
    /// This incarnation's timers; dropping them (the incarnation ends) cancels them.
    timers: Timers<E>,
    since_checkpoint: u32,
    last_checkpoint_ms: u64,
    /// The entity asked to stop; it does once its mailbox is empty.
    stopping: bool,
}

impl<E: Entity, K: KindHost<E>> EntityWorker<E, K> {
    /// The span of one handled message, with the game attributes. A message sent from inside
    /// a span (the gateway's frame span, which itself joined the client's trace) is that span's
    /// child; one sent from nowhere joins the client's trace directly when it carries one, or
    /// is a root Garrison's head sampling kept.
    fn span(
        &self,
        parent: &tracing::Span,
        context: &WorkerContext<Envelope<E>>,
        event_type: &'static str,
        session: Option<SessionId>,
        trace: Option<&TraceContext>,
    ) -> tracing::Span {
        let span = tracing::info_span!(
            parent: parent,
            "garrison.entity.handle",
            otel.name = %format_args!("{}.{}", E::KIND, event_type),
            game.session.id = tracing::field::Empty,
            game.event.type = event_type,
            game.world.zone = tracing::field::Empty,
            game.entity.kind = E::KIND,
            game.entity.key = %self.key,
            game.entity.incarnation = context.incarnation(),
            garrison.sampled = tracing::field::Empty,
        );
        if let Some(session) = session {
            span.record("game.session.id", session.0);
        }
        if let Some(zone) = &self.kind.config().zone {
            span.record("game.world.zone", &**zone);
        }
        if parent.is_none() {
            match trace {
                // Without an OpenTelemetry layer installed there is nothing to join.
                Some(trace) => {
                    let _ = span.set_parent(crate::telemetry::remote_parent(trace));
                }
                None => {
                    span.record(crate::telemetry::HEAD_SAMPLED, true);
                }
            }
        }
        span
    }

    /// Abandons this activation: its snapshot is set aside (the next activation of the key is
    /// fresh), the failure is reported, and the supervisor does not retry it, so what is queued
    /// goes to the dead letters with the reason.
    fn abandon(&self, reason: String) -> HandlerError {
        let snapshot: Option<Bytes> = {
            let mut saved = self.cell.saved();
            saved.log.clear();
            saved.snapshot.take()
        };
        let span = tracing::warn_span!(
            "garrison.entity.activation_failed",
            // Always exported, whatever the sampling ratio.
            garrison.sampled = true,
            game.entity.kind = E::KIND,
            game.entity.key = %self.key,
            game.world.zone = self.kind.config().zone.as_deref(),
            reason = %reason,
            quarantined = snapshot.as_ref().map(Bytes::len),
        );
        let _entered = span.enter();
        tracing::warn!(
            "entity activation failed: its queued messages are dead-lettered, its snapshot \
             quarantined, and its next message activates it fresh"
        );
        self.kind
            .stats()
            .crashed("activation", crate::stats::fingerprint(&reason), None);
        if let Some(snapshot) = snapshot {
            self.kind.quarantine().keep(Quarantined {
                kind: E::KIND,
                key: self.key.to_string(),
                reason: reason.clone(),
                snapshot,
            });
        }
        Box::new(Abandon(format!("activation failed: {reason}")))
    }

    /// Checkpoints the state (the log restarts after it); returns the cell's change count.
    fn checkpoint(&self, running: &mut Running<E>) -> Result<u64, HandlerError> {
        self.kind.stats().checkpointed();
        // Exactly the snapshot's size, from a per-thread writer: an active entity holds its
        // checkpoint and no buffer or arena of its own. A state the message left as it was (a
        // query, an echo) writes the same bytes as the last checkpoint: when no log follows it
        // and this activation already took it (so queued it for the store), nothing is copied
        // and the store has nothing new to write. A snapshot it did not take is taken once:
        // carried in (a reactivation, another activation's pending state) it is written whole;
        // loaded from the store, the write clears a log whose replay was refused and fences an
        // older owner's late writes with this activation's generation. A change the full
        // write-behind set did not queue is queued by the next checkpoint.
        let (changed, changes) =
            garrison_protocol::snapshot::write_with(&running.state, |bytes| {
                let mut saved = self.cell.saved();
                let queued = saved.snapshots > 0 && !saved.unqueued;
                if queued && saved.log.is_empty() && saved.snapshot.as_deref() == Some(bytes) {
                    return (false, saved.changes);
                }
                saved.checkpoint(Bytes::copy_from_slice(bytes));
                (true, saved.changes)
            })?;
        running.since_checkpoint = 0;
        running.last_checkpoint_ms = clock::now_millis();
        if changed {
            self.changed();
        }
        Ok(changes)
    }

    /// Appends what a handler logged; returns the cell's change count.
    fn append(&self, logged: Vec<Bytes>) -> u64 {
        let changes = {
            let mut saved = self.cell.saved();
            saved.append(logged);
            saved.changes
        };
        self.changed();
        changes
    }

    /// Queues the cell for the store, if the kind has one.
    fn changed(&self) {
        if let Some(durable) = self.kind.durable() {
            durable.mark_dirty(&self.key, &self.cell, self.kind.runtime(), false);
        }
    }

    /// Queues this activation's last change (its passivation or its end), however full the
    /// set: no next change will come to queue it.
    fn changed_last(&self) {
        if let Some(durable) = self.kind.durable() {
            durable.mark_dirty(&self.key, &self.cell, self.kind.runtime(), true);
        }
    }

    /// A fresh activation of a durable kind looks for its state: first a newer one another
    /// activation has not written yet, else the store. Returns whether the cell now holds
    /// recovered state, and whether the store's record was damaged (the entity then
    /// checkpoints what was good at once).
    async fn load(&self, durable: &Durable<E>) -> Result<(bool, bool), HandlerError> {
        if let Some(pending) = durable.pending_elsewhere(&self.key, &self.cell) {
            if pending.ended || pending.snapshot.is_none() {
                return Ok((false, false));
            }
            *self.cell.saved() = pending.carried();
            return Ok((true, false));
        }
        let key = self.key.to_string();
        let store = &durable.store;
        let stored = match store.get(E::KIND, &key).await {
            Ok(None) => return Ok((false, false)),
            Ok(Some(stored)) => stored,
            Err(StoreError::Corrupt { reason, .. }) => {
                self.set_aside(durable, &key, &format!("record damaged: {reason}"), None)
                    .await?;
                return Ok((false, false));
            }
            Err(error) => {
                return Err(self.abandon(format!(
                    "its state could not be read ({error}); it was not started fresh, which would \
                     overwrite that state"
                )));
            }
        };
        let log = store
            .read_log(E::KIND, &key, stored.log_from)
            .await
            .map_err(|error| self.abandon(format!("its log could not be read ({error})")))?;
        let damaged = log
            .damaged
            .as_ref()
            .map(|(seq, reason)| format!("log entry {seq}: {reason}"));
        let entries: Vec<Bytes> = log.entries.into_iter().map(|entry| entry.bytes).collect();
        let stored_entries = entries.len();
        *self.cell.saved() = Saved {
            snapshot: Some(stored.snapshot.clone()),
            log: entries,
            log_from: stored.log_from,
            snapshot_stored: damaged.is_none(),
            log_stored: stored_entries,
            ..Saved::default()
        };
        durable.count_recovered();
        if let Some(reason) = damaged {
            // The good prefix is replayed; the whole record is kept aside, and the entity
            // writes a new one at once.
            self.set_aside(durable, &key, &reason, Some(stored.snapshot))
                .await?;
            return Ok((true, true));
        }
        Ok((true, false))
    }

    /// Abandons an activation its module refused; state that came from the store is set aside
    /// there too, so the next activation does not fail on it again (it starts fresh).
    async fn refused(&self, from_store: bool, reason: String) -> HandlerError {
        if from_store && let Some(durable) = self.kind.durable() {
            let key = self.key.to_string();
            // Failing to set it aside is reported by `set_aside`; the abandon below stands.
            let _ = self.set_aside(durable, &key, &reason, None).await;
        }
        self.abandon(reason)
    }

    /// Sets entity `key`'s stored record aside (and, with `snapshot`, quarantines it here too),
    /// loudly.
    async fn set_aside(
        &self,
        durable: &Durable<E>,
        key: &str,
        reason: &str,
        snapshot: Option<Bytes>,
    ) -> Result<(), HandlerError> {
        let span = tracing::error_span!(
            "garrison.entity.record_set_aside",
            garrison.sampled = true,
            game.entity.kind = E::KIND,
            game.entity.key = %key,
            store = durable.store.name(),
            reason = %reason,
        );
        let _entered = span.enter();
        tracing::error!(
            "stored entity state is damaged: the record is set aside for inspection and the \
             entity goes on from what was good"
        );
        durable.count_set_aside();
        if let Some(snapshot) = snapshot {
            self.kind.quarantine().keep(Quarantined {
                kind: E::KIND,
                key: key.to_owned(),
                reason: reason.to_owned(),
                snapshot,
            });
        }
        durable
            .store
            .set_aside(E::KIND, key, reason)
            .await
            .map_err(|error| {
                self.abandon(format!(
                    "its damaged record could not be set aside ({error})"
                ))
            })
    }

    fn checkpoint_due(&self, running: &Running<E>) -> bool {
        match self.kind.config().checkpoint {
            Checkpoint::Never | Checkpoint::OnDemand => false,
            Checkpoint::EveryMessages(every) => running.since_checkpoint >= every.max(1),
            Checkpoint::Every(interval) => {
                clock::now_millis().saturating_sub(running.last_checkpoint_ms)
                    >= interval.as_millis() as u64
            }
        }
    }

    /// The context a handler (or `started`) sees.
    fn context<'a>(
        &'a self,
        context: &WorkerContext<Envelope<E>>,
        session: Option<SessionId>,
        origin: Option<&'a crate::origin::Origin>,
        timers: &'a mut Timers<E>,
    ) -> EntityContext<'a, E> {
        EntityContext {
            key: &self.key,
            incarnation: context.incarnation(),
            session,
            checkpoint_requested: false,
            passivate_requested: false,
            stop_requested: false,
            origin,
            timers,
            timer_shared: &self.cell.timers,
            logged: Vec::new(),
        }
    }

    /// Passivates if this incarnation still owns the key's entry and no message is waiting:
    /// the entry becomes the snapshot and the incarnation stops normally.
    fn passivate(
        &self,
        context: &WorkerContext<Envelope<E>>,
        running: &mut Running<E>,
    ) -> Result<(), HandlerError> {
        let bytes = garrison_protocol::snapshot::write_compact(&running.state)?;
        let last = || {
            self.cell.saved().checkpoint(bytes.clone());
            self.changed_last();
        };
        if self
            .kind
            .passivate(&self.key, &context.handle(), bytes.clone(), last)
        {
            tracing::debug!(game.entity.kind = E::KIND, game.entity.key = %self.key, "passivated");
            context.stop();
        }
        Ok(())
    }

    /// Hands the entity to its new owner: its state as it is now is checkpointed and confirmed
    /// by the store, what is queued behind the hand-off goes to the job's forwarder, and the
    /// incarnation stops (its timers go with it: the new owner's `started` runs its own). Its
    /// record stays: the new owner activates from it.
    async fn hand_off(
        &self,
        context: &WorkerContext<Envelope<E>>,
        running: &mut Running<E>,
        job: crate::ownership::HandOffJob<E>,
    ) -> Result<(), HandlerError> {
        let stored = match self.kind.durable() {
            Some(durable) => {
                let changes = self.checkpoint(running)?;
                durable.wait_stored(&self.cell, changes).await;
                self.cell.saved().stored_changes >= changes
            }
            // Nothing of a memory-only entity survives the move: its new owner starts it fresh.
            None => true,
        };
        let rest = self.kind.leave(
            &self.key,
            &context.handle(),
            &self.cell,
            crate::ownership::DepartureKind::HandedOff,
        );
        let (mut forwarded, mut dead_lettered) = (0, 0);
        for envelope in rest {
            match envelope {
                Envelope::Message {
                    message,
                    session,
                    origin,
                    ..
                } => {
                    let (event_type, trace) = (message.event_type(), message.trace_context());
                    match (job.forward)(&self.key, message) {
                        Ok(()) => forwarded += 1,
                        Err(reason) => {
                            dead_lettered += 1;
                            if let Some(origin) = &origin {
                                refuse(origin, E::KIND);
                            }
                            self.kind.dead_letters().record(DeadLetter {
                                kind: E::KIND,
                                key: self.key.to_string(),
                                event_type,
                                reason: format!("not handed off: {reason}"),
                                trace,
                                session: session.map(|session| session.0),
                            });
                        }
                    }
                }
                // A second hand-off of the same entity: it is done with this one.
                Envelope::HandOff(other) => {
                    let _ = other.done.send(crate::ownership::HandedOff {
                        stored,
                        forwarded: 0,
                        dead_lettered: 0,
                    });
                }
                Envelope::Tick { .. } | Envelope::Wake | Envelope::Passivate => {}
            }
        }
        context.stop();
        let _ = job.done.send(crate::ownership::HandedOff {
            stored,
            forwarded,
            dead_lettered,
        });
        Ok(())
    }

    /// The kind's lease has lapsed: `envelope` (if any) and everything queued are
    /// dead-lettered, and the activation leaves this process without writing anything more.
    fn lapse(&self, context: &WorkerContext<Envelope<E>>, envelope: Option<Envelope<E>>) {
        let key = self.key.to_string();
        let rest = self.kind.leave(
            &self.key,
            &context.handle(),
            &self.cell,
            crate::ownership::DepartureKind::Lapsed,
        );
        for envelope in envelope.into_iter().chain(rest) {
            if let Some(letter) = envelope.dead_letter(key.clone(), LAPSED.to_owned()) {
                self.kind.dead_letters().record(letter);
            }
        }
        tracing::warn!(
            game.entity.kind = E::KIND,
            game.entity.key = %self.key,
            "entity lapsed with its node's lease: forgotten here"
        );
        context.stop();
    }

    /// Whether the kind is under a fleet's lease that has lapsed.
    fn lapsed(&self) -> bool {
        self.kind.lease().is_some_and(|lease| !lease.is_valid())
    }

    /// Ends the entity for good if this incarnation still owns the key's entry and no message
    /// is waiting: the entry is removed (with its checkpoint) and the incarnation stops
    /// normally. With messages waiting it stays, and tries again after the next one.
    fn end(&self, context: &WorkerContext<Envelope<E>>) {
        let last = || {
            self.cell.saved().end();
            self.changed_last();
        };
        if self.kind.end(&self.key, &context.handle(), last) {
            tracing::debug!(game.entity.kind = E::KIND, game.entity.key = %self.key, "ended");
            context.stop();
        }
    }
}

impl<E: Entity, K: KindHost<E>> Worker for EntityWorker<E, K> {
    type Message = Envelope<E>;
    type State = Running<E>;

    async fn start(
        &self,
        context: &WorkerContext<Envelope<E>>,
    ) -> Result<Running<E>, HandlerError> {
        // A later incarnation of this activation is a restart after a crash; the first one
        // recovers whatever the activation was created from.
        let recovery = if context.incarnation() > 1 {
            Recovery::Crash
        } else {
            self.cell.recovery
        };
        // Fenced when it was created, but started only now (a process paused in between, or
        // a restart after the lease lapsed): nothing of it runs, not even its `activate`.
        if self.lapsed() {
            self.lapse(context, None);
            return Err(Box::new(Abandon(LAPSED.to_owned())));
        }
        let (mut from_store, mut must_checkpoint) = (false, false);
        if recovery == Recovery::Nothing
            && let Some(durable) = self.kind.durable()
        {
            // Boxed, as every rare path here: an entity's task is as large as the largest future
            // it may await.
            (from_store, must_checkpoint) = Box::pin(self.load(durable)).await?;
        }
        let Some(module) = self.kind.module() else {
            return Err(self.abandon("the kind is not served".to_owned()));
        };
        let saved = self.cell.saved().clone();
        let mut recovered = match saved.snapshot {
            Some(bytes) => match E::State::restore(bytes.clone()) {
                Ok(state) => Some(state),
                Err(error) if from_store => {
                    let reason = format!("stored snapshot refused: {error}");
                    *self.cell.saved() = Saved::default();
                    if let Some(durable) = self.kind.durable() {
                        let key = self.key.to_string();
                        Box::pin(self.set_aside(durable, &key, &reason, Some(bytes))).await?;
                    }
                    (from_store, must_checkpoint) = (false, false);
                    None
                }
                Err(error) => return Err(self.abandon(format!("snapshot refused: {error}"))),
            },
            None => None,
        };
        // The log since the snapshot, replayed in order; an entry the module refuses ends the
        // replay there (the entity goes on from the state before it, and checkpoints it).
        if let Some(state) = &mut recovered {
            for (at, entry) in saved.log.iter().enumerate() {
                if let Err(error) = module.replay(&self.key, state, entry) {
                    tracing::error!(
                        game.entity.kind = E::KIND,
                        game.entity.key = %self.key,
                        entry = saved.log_from + at as u64,
                        %error,
                        "log replay refused an entry: the entity goes on from the state before \
                         it, and the rest of the log is dropped"
                    );
                    self.cell.saved().log.truncate(at);
                    must_checkpoint = true;
                    break;
                }
            }
        }
        let activation = match (recovery, recovered) {
            (_, Some(state)) if from_store => Activation::Recovered(state),
            (Recovery::Crash, state) => Activation::Restarted(state),
            (Recovery::Passivation, Some(state)) => Activation::Reactivated(state),
            (_, _) => Activation::Fresh,
        };
        if matches!(activation, Activation::Restarted(None))
            && self.kind.config().checkpoint != Checkpoint::Never
        {
            tracing::warn!(
                game.entity.kind = E::KIND,
                game.entity.key = %self.key,
                checkpoint = ?self.kind.config().checkpoint,
                "entity restarted after a crash without a checkpoint: its state is lost; \
                 KindConfig::checkpoint = Checkpoint::EveryMessages(1) (the default) keeps it, \
                 or call context.checkpoint() after each change"
            );
        }
        let activated = AssertUnwindSafe(module.activate(&self.key, activation))
            .catch_unwind()
            .await;
        let state = match activated {
            Ok(Ok(state)) => state,
            Ok(Err(error)) => {
                return Err(self
                    .refused(from_store, format!("activate failed: {error}"))
                    .await);
            }
            Err(panic) => {
                let reason = format!("activate panicked: {}", panic_text(&*panic));
                return Err(Box::pin(self.refused(from_store, reason)).await);
            }
        };
        let mut timers = Timers::new(
            context.handle(),
            self.kind.timer_sink(),
            self.kind.config().max_timers,
        );
        if recovery == Recovery::Crash {
            timers.rearm_kept(&self.cell.timers, &self.key);
        }
        let mut running = Running {
            state,
            timers,
            since_checkpoint: 0,
            last_checkpoint_ms: clock::now_millis(),
            stopping: false,
        };
        let mut entity_context = self.context(context, None, None, &mut running.timers);
        let started =
            AssertUnwindSafe(async { module.started(&mut entity_context, &mut running.state) })
                .catch_unwind()
                .await;
        match started {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(self
                    .refused(from_store, format!("started failed: {error}"))
                    .await);
            }
            Err(panic) => {
                let reason = format!("started panicked: {}", panic_text(&*panic));
                return Err(Box::pin(self.refused(from_store, reason)).await);
            }
        }
        running.stopping |= entity_context.stop_requested;
        // What `started` logged is in the checkpoint (a snapshot supersedes a log).
        let logged = !entity_context.logged.is_empty();
        if must_checkpoint || entity_context.checkpoint_requested || logged {
            self.checkpoint(&mut running)?;
        }
        Ok(running)
    }

    async fn handle(
        &self,
        context: &WorkerContext<Envelope<E>>,
        envelope: Envelope<E>,
        running: &mut Running<E>,
    ) -> Result<(), HandlerError> {
        // A node whose lease on its fleet's entities has lapsed acts on none of them: another
        // node may own this one by now.
        if self.lapsed() {
            self.lapse(context, Some(envelope));
            return Ok(());
        }
        // A message's place under its kind's overload limit is held until it is handled.
        let _permit;
        let (message, parent, session, sampling, origin, ticked) = match envelope {
            Envelope::Message {
                message,
                parent,
                session,
                sampling,
                origin,
                queued,
                permit,
            } => {
                _permit = permit;
                if let Some(queued) = queued {
                    self.kind.stats().mailbox_wait.observe(queued.elapsed());
                }
                (message, parent, session, sampling, origin, false)
            }
            Envelope::Tick {
                generation,
                id,
                due,
            } => match running.timers.fire(generation, id) {
                Some(message) if self.kind.stats().timed() => {
                    self.kind.stats().tick_lateness.observe(due.elapsed());
                    (message, tracing::Span::none(), None, None, None, true)
                }
                Some(message) => (message, tracing::Span::none(), None, None, None, true),
                // An earlier incarnation's tick, or a cancelled timer's: nothing to handle, but
                // an entity waiting to stop may stop now.
                None => {
                    if running.stopping {
                        self.end(context);
                    }
                    return Ok(());
                }
            },
            Envelope::HandOff(job) => {
                return Box::pin(self.hand_off(context, running, job)).await;
            }
            // It was only asked to run (recovered at start); `started` has run, and may have
            // asked it to stop.
            Envelope::Wake => {
                if running.stopping {
                    self.end(context);
                }
                return Ok(());
            }
            Envelope::Passivate if running.stopping => {
                self.end(context);
                return Ok(());
            }
            Envelope::Passivate => {
                let timeout = self
                    .kind
                    .config()
                    .passivate_after
                    .map_or(u64::MAX, |after| after.as_millis() as u64);
                let idle = clock::now_millis()
                    .saturating_sub(self.cell.last_active.load(Ordering::Relaxed));
                return if idle >= timeout {
                    self.passivate(context, running)
                } else {
                    Ok(())
                };
            }
        };
        let event_type = message.event_type();
        let trace = message.trace_context();
        // A timer's message never keeps its entity from passivating.
        let activity = !ticked && message.counts_as_activity();
        // Head sampling, decided once (see `Sampling::decide`), before any span exists.
        let sampling = Sampling::decide(sampling, !parent.is_none(), trace.as_ref());
        let span = if sampling.is_kept() {
            self.span(&parent, context, event_type, session, trace.as_ref())
        } else {
            tracing::Span::none()
        };

        let traced = !span.is_disabled();
        if traced {
            context.set_trace_parent(&span);
        }
        let mut entity_context =
            self.context(context, session, origin.as_ref(), &mut running.timers);
        let Some(module) = self.kind.module() else {
            return Err("the kind is not served".into());
        };
        let timed = self
            .kind
            .stats()
            .handlers_timed()
            .then(std::time::Instant::now);
        // One coarse reading per message (a vDSO call): when its handling began (the lease was
        // checked just above) and, below, when the entity was last active. A departure reports
        // the last such instant: nothing of the entity began here after it, though a handler
        // that began before may end after it (a process paused in mid-handler); the store's
        // fencing token refuses what such a handler writes once another node owns the entity.
        let now = clock::now_millis();
        self.cell.last_handled.store(now, Ordering::Relaxed);
        let handled = AssertUnwindSafe(crate::telemetry::in_sampling(
            sampling,
            module
                .handle(&mut entity_context, message, &mut running.state)
                .instrument(span),
        ))
        .catch_unwind()
        .await;
        if let Some(started) = timed {
            self.kind.stats().handled(event_type, started.elapsed());
        }
        let failure = match &handled {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(("error", error.to_string())),
            Err(panic) => Some(("panic", panic_text(&**panic))),
        };
        if let Some((exit, reason)) = failure {
            let cause = match exit {
                "panic" => crate::stats::take_panic_location(&reason)
                    .unwrap_or_else(|| crate::stats::fingerprint(&reason)),
                _ => crate::stats::fingerprint(&reason),
            };
            self.kind.stats().crashed(exit, cause, trace);
            if let Some(origin) = &origin {
                refuse(origin, E::KIND);
            }
            self.kind.dead_letters().record(DeadLetter {
                kind: E::KIND,
                key: self.key.to_string(),
                event_type,
                reason,
                trace,
                session: session.map(|session| session.0),
            });
        }
        match handled {
            // Re-raised so the supervisor classifies the exit as a panic, exactly. The span stays
            // recorded for the supervisor's restart span, which takes it.
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(Err(error)) => return Err(error),
            Ok(Ok(())) if traced => context.clear_trace_parent(),
            Ok(Ok(())) => {}
        }

        if activity {
            self.cell.last_active.store(now, Ordering::Relaxed);
        }
        let (checkpoint_requested, stop_requested, passivate_requested) = (
            entity_context.checkpoint_requested,
            entity_context.stop_requested,
            entity_context.passivate_requested,
        );
        let logged = std::mem::take(&mut entity_context.logged);
        running.since_checkpoint = running.since_checkpoint.saturating_add(1);
        // What was logged joins the log, unless a checkpoint supersedes it: one is due or
        // asked for, there is no snapshot for the log to follow, or the log is at its bound.
        let log_full = || {
            let saved = self.cell.saved();
            saved.snapshot.is_none()
                || saved.log.len() + logged.len() > self.kind.config().max_log_entries
        };
        let changes = if checkpoint_requested
            || self.checkpoint_due(running)
            || (!logged.is_empty() && log_full())
        {
            Some(self.checkpoint(running)?)
        } else if !logged.is_empty() {
            Some(self.append(logged))
        } else {
            None
        };
        // Write-through: the next message waits until the store has this one's effect.
        if let (Some(changes), Some(durable)) = (changes, self.kind.durable())
            && durable.through
        {
            Box::pin(durable.wait_stored(&self.cell, changes)).await;
        }
        running.stopping |= stop_requested;
        if running.stopping {
            self.end(context);
        } else if passivate_requested {
            self.passivate(context, running)?;
        }
        Ok(())
    }
}

/// The message a panic carried.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}
