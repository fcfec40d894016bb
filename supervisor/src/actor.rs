//! The supervisor actor: ordered start and shutdown, restart strategies, intensity and
//! escalation, backoff, lifecycle events and restart traces.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RactorErr, SupervisionEvent};
use tokio::time::Instant;

use crate::{
    ChildSpec, Error, Start, SupervisorRef, SupervisorSpec,
    children::{ChildState, Children},
    exit::{self, ChildFailure, ExitReason, SHUTDOWN_REASON},
    handle::Request,
    introspection::{ChildStatus, EVENT_CHANNEL_CAPACITY, EventKind, LifecycleEvent},
    mailbox::MailboxClosed,
    policy::{AutoShutdown, ChildKind, CrashLoop, Intensity, Restart, Shutdown, Strategy},
    shared::Tree,
};

pub(crate) struct SupervisorArgs {
    pub(crate) spec: SupervisorSpec,
    pub(crate) tree: Tree,
}

impl Start {
    /// Starts a nested supervisor.
    pub fn supervisor(spec: SupervisorSpec) -> Start {
        let nested = Box::new(spec.clone());
        let start: crate::spec::StartFn = Arc::new(move |parent, tree| {
            let spec = spec.clone();
            Box::pin(async move {
                let args = SupervisorArgs { spec, tree };
                match Actor::spawn_linked(None, SupervisorActor, args, parent).await {
                    Ok((actor, _)) => Ok(actor.get_cell()),
                    Err(error) => Err(exit::from_spawn_error(error)),
                }
            })
        });
        Start {
            kind: ChildKind::Supervisor,
            start,
            handle: None,
            slot: None,
            nested: Some(nested),
        }
    }
}

impl SupervisorSpec {
    /// Starts the tree: children in declaration order, each fully started before the next.
    ///
    /// # Errors
    /// [`Error::StartFailed`] naming the first child that failed to start (the ones before it
    /// are stopped again, in reverse), or [`Error::Spawn`].
    pub async fn start(self) -> Result<SupervisorRef, Error> {
        start_root(self).await
    }
}

/// Starts a tree's root supervisor.
async fn start_root(spec: SupervisorSpec) -> Result<SupervisorRef, Error> {
    let tree = Tree::new(EVENT_CHANNEL_CAPACITY);
    let handle = spec.handle();
    handle.shared().make_root();
    let id = spec.id.to_string();
    match Actor::spawn(None, SupervisorActor, SupervisorArgs { spec, tree }).await {
        Ok(_) => Ok(handle),
        Err(ractor::SpawnErr::StartupFailed(error)) => match exit::from_failure(&*error) {
            ExitReason::StartFailed(reason) => Err(start_failed_error(&id, &reason)),
            other => Err(Error::Spawn {
                supervisor: id,
                reason: other.to_string(),
            }),
        },
        Err(error) => Err(Error::Spawn {
            supervisor: id,
            reason: error.to_string(),
        }),
    }
}

/// Turns "child X: reason" (how a supervisor reports a failed start) into the typed error.
fn start_failed_error(supervisor: &str, reason: &str) -> Error {
    let (child, reason) = reason.split_once(": ").unwrap_or(("?", reason));
    Error::StartFailed {
        supervisor: supervisor.to_owned(),
        child: child.to_owned(),
        reason: reason.to_owned(),
    }
}

pub(crate) struct SupervisorActor;

pub(crate) struct SupervisorState {
    spec: crate::SupervisorSpec,
    children: Children,
    /// Restart times for intensity (static supervisors).
    window: VecDeque<Instant>,
    tree: Tree,
    next_generation: u64,
    myself: ActorRef<Request>,
    /// Deterministic jitter source for backoff (splitmix64).
    noise: u64,
}

impl SupervisorState {
    fn emit(&self, child: &Arc<str>, kind: EventKind) {
        // No subscriber is fine: events are for whoever listens.
        let _ = self.tree.events.send(LifecycleEvent {
            supervisor: self.spec.id.clone(),
            child: child.clone(),
            kind,
        });
    }

    fn index_of_cell(&self, cell: &ActorCell) -> Option<usize> {
        self.children.index_of_actor(cell.get_id())
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.children.index_of(id)
    }

    fn next_noise(&mut self) -> f64 {
        self.noise = self.noise.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.noise;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    }

    /// Starts child `index`; on success it is running and `Started` is emitted.
    async fn start_child(&mut self, index: usize) -> Result<(), ExitReason> {
        let supervisor = self.myself.get_cell();
        let tree = self.tree.clone();
        let child = &mut self.children[index];
        if let Some(slot) = &child.spec.start.slot {
            slot.reopen();
        }
        let cell = child.spec.start.run(supervisor, tree).await?;
        self.children.set_cell(index, cell);
        let child = &mut self.children[index];
        child.status = ChildStatus::Running;
        child.started_at = Some(Instant::now());
        let id = child.spec.id.clone();
        self.emit(&id, EventKind::Started);
        Ok(())
    }

    /// Stops child `index` with its shutdown policy and waits until it has stopped.
    async fn stop_child(&mut self, index: usize) {
        let Some(cell) = self.children.take_cell(index) else {
            return;
        };
        let child = &mut self.children[index];
        // A worker waiting for work inside its handler takes no stop until it returns.
        if let Some(slot) = &child.spec.start.slot {
            slot.interrupt();
        }
        let reason = match child.spec.shutdown {
            Shutdown::BrutalKill => {
                let _ = cell.kill_and_wait(None).await;
                ExitReason::Killed
            }
            Shutdown::Timeout(limit) => {
                let deadline = Instant::now() + limit;
                let ended = match cell
                    .stop_and_wait(Some(SHUTDOWN_REASON.to_owned()), Some(limit))
                    .await
                {
                    Ok(()) => true,
                    Err(RactorErr::Timeout) => false,
                    // Its stop was taken already (the worker stopped itself): that stop may
                    // still be running its hook, and ends within the same limit or is killed.
                    Err(_) => cell
                        .wait(Some(deadline.saturating_duration_since(Instant::now())))
                        .await
                        .is_ok(),
                };
                if ended {
                    ExitReason::Shutdown
                } else {
                    let _ = cell.kill_and_wait(None).await;
                    ExitReason::Killed
                }
            }
            Shutdown::Infinity => {
                if cell
                    .stop_and_wait(Some(SHUTDOWN_REASON.to_owned()), None)
                    .await
                    .is_err()
                {
                    // Its stop was taken already (the worker stopped itself): wait for it.
                    let _ = cell.wait(None).await;
                }
                ExitReason::Shutdown
            }
        };
        if let Some(slot) = &child.spec.start.slot {
            // A kill ended the actor, not its drain task: that ends at its next await (or once
            // a handler blocking its thread returns), and the next incarnation waits for it.
            // Whatever of the worker's state ractor kept goes first.
            slot.discard(cell.get_id());
            slot.drains().drained(cell.get_id()).await;
            slot.detach(cell.get_id());
        }
        child.status = ChildStatus::Terminated;
        let id = child.spec.id.clone();
        self.emit(&id, EventKind::Stopped(reason));
    }

    /// Stops every running child in reverse start order.
    async fn stop_all(&mut self) {
        for index in (0..self.children.len()).rev() {
            self.stop_child(index).await;
        }
    }

    /// Records a restart; returns false when the intensity is exceeded.
    fn allow_restart(&mut self, index: usize) -> bool {
        let Intensity {
            max_restarts,
            period,
        } = self.spec.intensity;
        let now = Instant::now();
        let window = if self.spec.max_children.is_some() {
            &mut self.children[index].window
        } else {
            &mut self.window
        };
        window.push_back(now);
        // Only the newest `max_restarts + 1` entries can matter (one more than allowed already
        // escalates), so the window never outgrows the configuration, whatever the restart rate.
        while window.len() > max_restarts as usize + 1
            || window
                .front()
                .is_some_and(|at| now.duration_since(*at) > period)
        {
            window.pop_front();
        }
        window.len() <= max_restarts as usize
    }

    /// What the supervisor does after child `index` ended with `reason` (it is no longer
    /// running): retire it when its restart type says so, give up on it or escalate when the
    /// restart intensity is exceeded, else restart it with the group its strategy names. Returns
    /// an error when the supervisor must fail (escalation).
    async fn on_exit(
        &mut self,
        index: usize,
        reason: ExitReason,
    ) -> Result<(), ActorProcessingErr> {
        let child = &mut self.children[index];
        child.status = ChildStatus::Terminated;
        let restart = match child.spec.restart {
            Restart::Permanent => true,
            Restart::Transient => reason.is_abnormal(),
            Restart::Temporary => false,
        };
        if !restart {
            self.retire(index, reason);
            return Ok(());
        }
        if !self.allow_restart(index) {
            if self.spec.max_children.is_some() && self.spec.crash_loop == CrashLoop::RemoveChild {
                self.give_up(index, reason);
                return Ok(());
            }
            return Err(self.escalate(index, reason).await);
        }
        self.restart_group(index, reason).await;
        Ok(())
    }

    /// Child `index` ended and is not restarted. A temporary child, or any child of a dynamic
    /// supervisor, is removed and its mailbox closed; a transient child of a static supervisor
    /// keeps its spec and mailbox for `restart_child`. A significant child may end the supervisor.
    fn retire(&mut self, index: usize, reason: ExitReason) {
        let child = &self.children[index];
        let significant = child.spec.significant;
        if child.spec.restart == Restart::Temporary || self.spec.max_children.is_some() {
            let child = self.children.remove(index);
            child.spec.start.close(&MailboxClosed::Exited(reason));
        }
        if significant && self.auto_shutdown_due() {
            self.myself.stop(Some(SHUTDOWN_REASON.to_owned()));
        }
    }

    /// A dynamic supervisor gives up on a crash-looping child alone: it is removed, and the
    /// messages still in its mailbox go to the mailbox's undelivered hook.
    fn give_up(&mut self, index: usize, reason: ExitReason) {
        let id = self.children[index].spec.id.clone();
        let span = tracing::warn_span!(
            "garrison.supervisor.give_up",
            // Always exported, whatever the sampling ratio (garrison-runtime's head sampling).
            garrison.sampled = true,
            supervisor.id = %self.spec.id,
            child.id = %id,
            exit.reason = %reason,
        );
        let _entered = span.enter();
        tracing::warn!("child exceeded its restart intensity; removing it");
        let child = self.children.remove(index);
        child.spec.start.close(&MailboxClosed::GaveUp(reason));
        self.emit(&id, EventKind::GaveUp);
    }

    /// The restart intensity is exceeded: stop every child in reverse start order and fail
    /// with `Escalated`, which the parent sees as one abnormal exit. Returns that failure.
    async fn escalate(&mut self, index: usize, reason: ExitReason) -> ActorProcessingErr {
        let id = self.children[index].spec.id.clone();
        let Intensity {
            max_restarts,
            period,
        } = self.spec.intensity;
        let span = tracing::warn_span!(
            "garrison.supervisor.escalate",
            // Always exported, whatever the sampling ratio (garrison-runtime's head sampling).
            garrison.sampled = true,
            supervisor.id = %self.spec.id,
            supervisor.strategy = self.spec.strategy.name(),
            child.id = %id,
            exit.reason = %reason,
            restart.max = max_restarts,
            restart.period_ms = period.as_millis() as u64,
        );
        let _entered = span.enter();
        tracing::warn!("restart intensity exceeded; stopping children and escalating");
        let shared = self.spec.shared.clone();
        // A failing actor gets no post_stop: say it is down here.
        shared.set_current(None);
        if shared.is_root() {
            // Nobody above will restart this tree: close its handles as it goes.
            shared.mark_closing();
        }
        self.stop_all().await;
        if self.closes_for_good() {
            self.close_slots();
        }
        self.emit(&self.spec.id.clone(), EventKind::Escalated);
        let escalated = ExitReason::Escalated(format!(
            "more than {max_restarts} restarts in {period:?} (last: child {id}, {reason})"
        ));
        shared.exit.send_replace(Some(escalated.clone()));
        Box::new(ChildFailure(escalated))
    }

    /// Restarts child `index` and the siblings its strategy groups with it: the others are
    /// stopped in reverse start order, temporary ones are removed (OTP never restarts a
    /// temporary child), and the rest start again in start order after the backoff delay.
    async fn restart_group(&mut self, index: usize, reason: ExitReason) {
        let id = self.children[index].spec.id.clone();
        let count = self.children.len();
        let group: Vec<usize> = match self.spec.strategy {
            Strategy::OneForOne => vec![index],
            Strategy::OneForAll => (0..count).collect(),
            Strategy::RestForOne => (index..count).collect(),
        };
        // Siblings concerned: those running now or already waiting for a restart.
        let members: Vec<usize> = group
            .into_iter()
            .filter(|&member| {
                member == index
                    || self.children[member].is_running()
                    || self.children[member].status == ChildStatus::Restarting
            })
            .collect();
        for &member in members.iter().rev() {
            if member != index {
                self.stop_child(member).await;
            }
        }
        // Temporary siblings are terminated and removed, last first so earlier indices hold.
        let mut restarting: Vec<Arc<str>> = Vec::with_capacity(members.len());
        for &member in members.iter().rev() {
            let child = &self.children[member];
            if member != index && child.spec.restart == Restart::Temporary {
                let removed = self.children.remove(member);
                removed
                    .spec
                    .start
                    .close(&MailboxClosed::Exited(ExitReason::Shutdown));
            } else {
                restarting.push(child.spec.id.clone());
            }
        }
        let Some(index) = self.index_of(&id) else {
            return;
        };

        let delay = self.backoff_delay(index);
        self.next_generation += 1;
        let generation = self.next_generation;
        let child = &mut self.children[index];
        child.restarts += 1;
        let restarts = child.restarts;
        let attributes = child.spec.attributes.clone();
        for member in &restarting {
            if let Some(member) = self.index_of(member) {
                self.children[member].status = ChildStatus::Restarting;
                self.children[member].pending = Some(generation);
            }
        }
        {
            let trace_parent = self.children[index]
                .spec
                .start
                .slot
                .as_ref()
                .and_then(|slot| slot.take_trace_parent());
            let span = tracing::info_span!(
                parent: trace_parent.as_ref().and_then(tracing::Span::id),
                "garrison.supervisor.restart",
                // Always exported, whatever the sampling ratio (garrison-runtime's head sampling).
                garrison.sampled = true,
                supervisor.id = %self.spec.id,
                supervisor.strategy = self.spec.strategy.name(),
                child.id = %id,
                exit.kind = reason.kind(),
                exit.reason = %reason,
                restart.count = restarts,
                restart.delay_ms = delay.as_millis() as u64,
                game.session.id = tracing::field::Empty,
                game.world.zone = tracing::field::Empty,
                game.entity.kind = tracing::field::Empty,
                game.entity.key = tracing::field::Empty,
            );
            for (field, value) in [
                ("game.session.id", &attributes.session_id),
                ("game.world.zone", &attributes.zone),
                ("game.entity.kind", &attributes.entity_kind),
                ("game.entity.key", &attributes.entity_key),
            ] {
                if let Some(value) = value {
                    span.record(field, &**value);
                }
            }
            let _entered = span.enter();
            tracing::info!("restarting");
        }
        self.emit(&id, EventKind::Restarting { delay, restarts });
        if delay.is_zero() {
            self.restart_generation(generation).await;
        } else {
            let myself = self.myself.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = myself.send_message(Request::RestartDue { generation });
            });
        }
    }

    /// The backoff before restarting child `index` (zero without backoff). The attempt count
    /// resets only when the incarnation that just ended had *stayed up* for `reset_after` since
    /// its start; a start that failed ran for no time at all, so failing restarts keep growing
    /// the delay up to `max` (Akka's `restartWithBackoff`).
    fn backoff_delay(&mut self, index: usize) -> Duration {
        // Taken whatever the policy: the next exit measures the next successful start only.
        let started_at = self.children[index].started_at.take();
        let Some(backoff) = self.children[index].spec.backoff else {
            return Duration::ZERO;
        };
        let noise = self.next_noise();
        let child = &mut self.children[index];
        if started_at.is_some_and(|at| at.elapsed() >= backoff.reset_after) {
            child.backoff_attempt = 0;
        }
        let delay = backoff.delay(child.backoff_attempt, noise);
        child.backoff_attempt = child.backoff_attempt.saturating_add(1);
        delay
    }

    /// Starts, in start order, the children waiting for restart `generation`. A failed start is
    /// handled as that child's exit (counting toward intensity); the rest of the group keeps
    /// waiting and is picked up by that handling.
    async fn restart_generation(&mut self, generation: u64) {
        let mut index = 0;
        while index < self.children.len() {
            if self.children[index].pending == Some(generation) {
                self.children[index].pending = None;
                if let Err(reason) = self.start_child(index).await {
                    let id = self.children[index].spec.id.clone();
                    let _ = self
                        .myself
                        .send_message(Request::StartFailed { id, reason });
                    return;
                }
            }
            index += 1;
        }
    }

    /// Closes every child's mailbox (and nested subtrees') for good, after the children stopped.
    fn close_slots(&self) {
        for child in self.children.iter() {
            child.spec.start.close(&MailboxClosed::Shutdown);
        }
    }

    /// Whether this supervisor's children are gone for good once it stops: the tree is closing,
    /// it is the root (nobody restarts it), or it is dynamic (its children are not in its spec,
    /// so a restarted incarnation would never serve their mailboxes again).
    fn closes_for_good(&self) -> bool {
        self.tree.is_closing() || self.spec.shared.is_root() || self.spec.max_children.is_some()
    }

    fn auto_shutdown_due(&self) -> bool {
        match self.spec.auto_shutdown {
            AutoShutdown::Never => false,
            AutoShutdown::AnySignificant => true,
            AutoShutdown::AllSignificant => !self
                .children
                .iter()
                .any(|child| child.spec.significant && child.status != ChildStatus::Terminated),
        }
    }

    async fn handle_request(&mut self, message: Request) -> Result<(), ActorProcessingErr> {
        match message {
            Request::RestartDue { generation } => self.restart_generation(generation).await,
            Request::StartFailed { id, reason } => {
                if let Some(index) = self.index_of(&id) {
                    let child_id = self.children[index].spec.id.clone();
                    self.emit(&child_id, EventKind::Exited(reason.clone()));
                    return self.on_exit(index, reason).await;
                }
            }
            Request::WhichChildren(reply) => {
                let _ = reply.send(self.children.iter().map(ChildState::info).collect());
            }
            Request::Snapshot(reply) => {
                let children = self
                    .children
                    .iter()
                    .map(|child| (child.info(), child.spec.start.nested_handle()))
                    .collect();
                let _ = reply.send((self.spec.strategy.name().to_owned(), children));
            }
            Request::Lookup(id, reply) => {
                let found = self.index_of(&id).map(|index| {
                    (
                        self.children[index].spec.start.handle.clone(),
                        self.children[index].spec.start.nested_handle(),
                    )
                });
                let _ = reply.send(found);
            }
            Request::StartChild(spec, reply) => {
                let _ = reply.send(self.add_child(*spec).await);
            }
            Request::TerminateChild(id, reply) => {
                let Some(index) = self.index_of(&id) else {
                    let _ = reply.send(Err(self.no_such(&id)));
                    return Ok(());
                };
                self.stop_child(index).await;
                if self.spec.max_children.is_some() {
                    let child = self.children.remove(index);
                    child.spec.start.close(&MailboxClosed::Terminated);
                }
                let _ = reply.send(Ok(()));
            }
            Request::RestartChild(id, reply) => {
                let Some(index) = self.index_of(&id) else {
                    let _ = reply.send(Err(self.no_such(&id)));
                    return Ok(());
                };
                self.stop_child(index).await;
                self.children[index].pending = None;
                let started = self
                    .start_child(index)
                    .await
                    .map_err(|reason| Error::StartFailed {
                        supervisor: self.spec.id.to_string(),
                        child: id.to_string(),
                        reason: reason.to_string(),
                    });
                let _ = reply.send(started);
            }
        }
        Ok(())
    }

    fn no_such(&self, id: &str) -> Error {
        Error::NoSuchChild {
            supervisor: self.spec.id.to_string(),
            child: id.to_owned(),
        }
    }

    async fn add_child(&mut self, spec: ChildSpec) -> Result<(), Error> {
        let supervisor = self.spec.id.to_string();
        if self.index_of(&spec.id).is_some() {
            return Err(Error::DuplicateChild {
                supervisor,
                child: spec.id.to_string(),
            });
        }
        if let Some(max) = self.spec.max_children
            && self.children.len() >= max
        {
            return Err(Error::MaxChildren { supervisor, max });
        }
        let id = spec.id.clone();
        let index = self.children.push(ChildState::new(spec));
        if let Err(reason) = self.start_child(index).await {
            self.emit(&id, EventKind::Exited(reason.clone()));
            let child = self.children.remove(index);
            // What was queued for it before its first start is handed over, not dropped.
            child
                .spec
                .start
                .close(&MailboxClosed::Exited(reason.clone()));
            return Err(Error::StartFailed {
                supervisor,
                child: id.to_string(),
                reason: reason.to_string(),
            });
        }
        Ok(())
    }
}

impl Actor for SupervisorActor {
    type Msg = Request;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Request>,
        SupervisorArgs { spec, tree }: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let shared = spec.shared.clone();
        shared.set_tree(tree.clone());
        shared.exit.send_replace(None);
        let noise = spec
            .id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
            });
        let mut state = SupervisorState {
            children: Children::new(
                spec.children.iter().cloned().map(ChildState::new).collect(),
                spec.max_children.is_none(),
            ),
            spec,
            window: VecDeque::new(),
            tree,
            next_generation: 0,
            myself: myself.clone(),
            noise,
        };
        for index in 0..state.children.len() {
            if let Err(reason) = state.start_child(index).await {
                // Children already started stop again, in reverse, before the failure is reported.
                state.stop_all().await;
                let id = state.children[index].spec.id.clone();
                let detail = match reason {
                    ExitReason::StartFailed(detail) => detail,
                    other => other.to_string(),
                };
                return Err(Box::new(ChildFailure(ExitReason::StartFailed(format!(
                    "{id}: {detail}"
                )))));
            }
        }
        shared.set_current(Some(myself.get_cell()));
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Request>,
        message: Request,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.handle_request(message).await
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Request>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, exit::from_termination(reason.as_deref()))
            }
            SupervisionEvent::ActorFailed(cell, error) => (cell, exit::from_failure(&*error)),
            _ => return Ok(()),
        };
        // Events from incarnations the supervisor already stopped itself are stale.
        let Some(index) = state.index_of_cell(&cell) else {
            return Ok(());
        };
        state.children.take_cell(index);
        let child = &mut state.children[index];
        if let Some(slot) = &child.spec.start.slot {
            slot.detach(cell.get_id());
        }
        let id = child.spec.id.clone();
        state.emit(&id, EventKind::Exited(reason.clone()));
        state.on_exit(index, reason).await
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Request>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let shared = state.spec.shared.clone();
        shared.set_current(None);
        state.stop_all().await;
        if state.closes_for_good() {
            state.close_slots();
        }
        let id = state.spec.id.clone();
        state.emit(&id, EventKind::ShutDown);
        shared.exit.send_replace(Some(ExitReason::Shutdown));
        Ok(())
    }
}
