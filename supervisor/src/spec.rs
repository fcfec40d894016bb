//! Declarations: how a child starts (`Start`), child specs, and supervisor specs with their
//! builder. Nothing here runs: the supervisor actor (`actor`) starts what these declare.

use std::{any::Any, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorId};

use crate::{
    exit::{self, ExitReason, panic_message},
    mailbox::{ChildRef, DEFAULT_MAILBOX_CAPACITY, Drains, MailboxClosed, Overflow, Slot},
    policy::{
        AutoShutdown, Backoff, ChildKind, CrashLoop, DEFAULT_WORKER_SHUTDOWN, GameAttributes,
        Intensity, Restart, Shutdown, Strategy,
    },
    shared::{SupervisorShared, Tree},
    worker::{Host, Worker},
};

pub(crate) type StartFn =
    Arc<dyn Fn(ActorCell, Tree) -> BoxFuture<'static, Result<ActorCell, ExitReason>> + Send + Sync>;

/// What the supervisor needs of a worker's slot without knowing its message type.
pub(crate) trait SlotControl: Send + Sync {
    fn name(&self, id: &Arc<str>);
    fn detach(&self, actor: ActorId);
    fn close(&self, why: &MailboxClosed);
    fn reopen(&self);
    fn depth(&self) -> usize;
    fn take_trace_parent(&self) -> Option<tracing::Span>;
    /// The running incarnation is about to be asked to stop: it leaves its wait for work.
    fn interrupt(&self);
    /// Its incarnations' drain tasks still running.
    fn drains(&self) -> Arc<Drains>;
    /// Drops the context and state of the incarnation of `actor`, wherever ractor keeps them.
    fn discard(&self, actor: ActorId);
}

impl<M: Send + 'static> SlotControl for Slot<M> {
    fn name(&self, id: &Arc<str>) {
        Slot::name(self, id)
    }
    fn detach(&self, actor: ActorId) {
        Slot::detach(self, actor)
    }
    fn close(&self, why: &MailboxClosed) {
        Slot::close(self, why)
    }
    fn reopen(&self) {
        Slot::reopen(self)
    }
    fn depth(&self) -> usize {
        Slot::depth(self)
    }
    fn interrupt(&self) {
        Slot::interrupt(self)
    }
    fn take_trace_parent(&self) -> Option<tracing::Span> {
        Slot::take_trace_parent(self)
    }
    fn drains(&self) -> Arc<Drains> {
        Slot::drains(self).clone()
    }
    fn discard(&self, actor: ActorId) {
        Slot::discard(self, actor)
    }
}

/// How to start a child, again and again: a worker factory with its mailbox, or a nested
/// supervisor's spec.
#[derive(Clone)]
pub struct Start {
    pub(crate) kind: ChildKind,
    pub(crate) start: StartFn,
    pub(crate) handle: Option<Arc<dyn Any + Send + Sync>>,
    pub(crate) slot: Option<Arc<dyn SlotControl>>,
    /// A nested supervisor's spec: its handle, and its children's slots to close when it is gone
    /// for good.
    pub(crate) nested: Option<Box<SupervisorSpec>>,
}

impl std::fmt::Debug for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Start")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Start {
    /// Starts a [`Worker`] made by `factory`, called once per incarnation, with a mailbox of
    /// [`DEFAULT_MAILBOX_CAPACITY`] that rejects when full.
    pub fn worker<W: Worker>(factory: impl Fn() -> W + Send + Sync + 'static) -> Start {
        Start::worker_with_mailbox(factory, DEFAULT_MAILBOX_CAPACITY, Overflow::Reject)
    }

    /// Starts a [`Worker`] with a mailbox of `capacity` messages and the given overflow policy.
    pub fn worker_with_mailbox<W: Worker>(
        factory: impl Fn() -> W + Send + Sync + 'static,
        capacity: usize,
        overflow: Overflow,
    ) -> Start {
        let factory = Arc::new(factory);
        let slot = Arc::new(Slot::<W::Message>::new(capacity, overflow));
        let start_slot = slot.clone();
        let start: StartFn = Arc::new(move |supervisor, _tree| {
            let slot = start_slot.clone();
            let factory = factory.clone();
            Box::pin(async move {
                let worker =
                    std::panic::catch_unwind(AssertUnwindSafe(|| factory())).map_err(|panic| {
                        ExitReason::StartFailed(format!(
                            "factory panicked: {}",
                            panic_message(&*panic)
                        ))
                    })?;
                match Actor::spawn_linked(None, Host::new(worker, slot), (), supervisor).await {
                    Ok((actor, _)) => Ok(actor.get_cell()),
                    Err(error) => Err(exit::from_spawn_error(error)),
                }
            })
        });
        Start {
            kind: ChildKind::Worker,
            start,
            handle: Some(Arc::new(ChildRef::new(slot.clone()))),
            slot: Some(slot),
            nested: None,
        }
    }

    /// Runs every incarnation of this worker on `runtime` instead of the supervisor's (an event
    /// loop's current-thread runtime, say, so a session's entity runs on its connection's
    /// thread). `hold` is kept alive for as long as the child is supervised, restarts included,
    /// and dropped with its spec when the child is gone for good: the owner of `runtime` can
    /// keep it running until then. When `runtime` has shut down, the start fails
    /// (`StartFailed`) and the supervisor treats it as any failed start.
    #[must_use]
    pub fn on_runtime(
        mut self,
        runtime: tokio::runtime::Handle,
        hold: Arc<dyn Any + Send + Sync>,
    ) -> Start {
        let start = self.start.clone();
        self.start = Arc::new(move |supervisor, tree| {
            // Held by this closure, which lives in the child's spec.
            let _ = &hold;
            let placed = runtime.spawn(start(supervisor, tree));
            Box::pin(async move {
                match placed.await {
                    Ok(started) => started,
                    Err(error) => Err(ExitReason::StartFailed(format!(
                        "its runtime could not run it: {error}"
                    ))),
                }
            })
        });
        self
    }

    /// Closes this child's mailbox, or every mailbox of a nested supervisor's subtree, for good.
    pub(crate) fn close(&self, why: &MailboxClosed) {
        if let Some(slot) = &self.slot {
            slot.close(why);
        }
        if let Some(spec) = &self.nested {
            for child in &spec.children {
                child.start.close(why);
            }
        }
    }

    pub(crate) async fn run(
        &self,
        supervisor: ActorCell,
        tree: Tree,
    ) -> Result<ActorCell, ExitReason> {
        (self.start)(supervisor, tree).await
    }
}

/// One child of a supervisor: its id, how to start it, and its policies.
#[derive(Clone, Debug)]
pub struct ChildSpec {
    pub(crate) id: Arc<str>,
    pub(crate) start: Start,
    pub(crate) restart: Restart,
    pub(crate) shutdown: Shutdown,
    pub(crate) significant: bool,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) attributes: GameAttributes,
}

impl ChildSpec {
    /// A permanent child; workers stop with [`DEFAULT_WORKER_SHUTDOWN`], supervisors with
    /// [`Shutdown::Infinity`].
    pub fn new(id: impl Into<Arc<str>>, start: Start) -> ChildSpec {
        let id = id.into();
        let shutdown = match start.kind {
            ChildKind::Worker => DEFAULT_WORKER_SHUTDOWN,
            ChildKind::Supervisor => Shutdown::Infinity,
        };
        if let Some(slot) = &start.slot {
            slot.name(&id);
        }
        ChildSpec {
            id,
            start,
            restart: Restart::Permanent,
            shutdown,
            significant: false,
            backoff: None,
            attributes: GameAttributes::default(),
        }
    }

    /// Sets the restart type.
    pub fn restart(mut self, restart: Restart) -> ChildSpec {
        self.restart = restart;
        self
    }

    /// Sets the shutdown policy.
    pub fn shutdown(mut self, shutdown: Shutdown) -> ChildSpec {
        self.shutdown = shutdown;
        self
    }

    /// Marks the child significant (see [`AutoShutdown`]).
    pub fn significant(mut self, significant: bool) -> ChildSpec {
        self.significant = significant;
        self
    }

    /// Restarts the child with exponential backoff.
    pub fn backoff(mut self, backoff: Backoff) -> ChildSpec {
        self.backoff = Some(backoff);
        self
    }

    /// Game attributes for this child's restart traces.
    pub fn attributes(mut self, attributes: GameAttributes) -> ChildSpec {
        self.attributes = attributes;
        self
    }

    /// The child id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The worker's stable handle, if this child is a worker whose messages are `M`.
    pub fn handle<M: Send + 'static>(&self) -> Option<ChildRef<M>> {
        self.start
            .handle
            .as_ref()?
            .downcast_ref::<ChildRef<M>>()
            .cloned()
    }
}

/// A validated supervisor declaration, ready to [`start`](SupervisorSpec::start) or to nest.
///
/// Cloning a spec shares its children's mailboxes and its [`SupervisorRef`](crate::SupervisorRef): a nested
/// supervisor restarted by its parent keeps both.
#[derive(Clone, Debug)]
pub struct SupervisorSpec {
    pub(crate) id: Arc<str>,
    pub(crate) strategy: Strategy,
    pub(crate) intensity: Intensity,
    pub(crate) auto_shutdown: AutoShutdown,
    pub(crate) children: Vec<ChildSpec>,
    pub(crate) max_children: Option<usize>,
    pub(crate) crash_loop: CrashLoop,
    /// What its stable handle and every incarnation share.
    pub(crate) shared: Arc<SupervisorShared>,
}

impl SupervisorSpec {
    /// The supervisor's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Builds a [`SupervisorSpec`]; what the [`supervisor!`](crate::supervisor!) DSL expands to.
#[derive(Debug)]
pub struct SupervisorBuilder {
    id: Arc<str>,
    strategy: Strategy,
    intensity: Intensity,
    auto_shutdown: AutoShutdown,
    children: Vec<ChildSpec>,
    max_children: Option<usize>,
    crash_loop: CrashLoop,
}

impl SupervisorBuilder {
    /// A one-for-one supervisor with the default intensity and no children.
    pub fn new(id: impl Into<Arc<str>>) -> SupervisorBuilder {
        SupervisorBuilder {
            id: id.into(),
            strategy: Strategy::OneForOne,
            intensity: Intensity::default(),
            auto_shutdown: AutoShutdown::Never,
            children: Vec::new(),
            max_children: None,
            crash_loop: CrashLoop::Escalate,
        }
    }

    /// A dynamic supervisor: one-for-one, children added at run time with
    /// [`SupervisorRef::start_child`](crate::SupervisorRef::start_child), at most `max_children` at once. Its restart intensity is
    /// counted per child, so one crash-looping child escalates instead of its siblings' crashes
    /// adding up across thousands of rooms.
    pub fn dynamic(id: impl Into<Arc<str>>, max_children: usize) -> SupervisorBuilder {
        SupervisorBuilder {
            max_children: Some(max_children),
            ..SupervisorBuilder::new(id)
        }
    }

    /// Sets what a dynamic supervisor does when one child exceeds its restart intensity
    /// (ignored by static supervisors, which always escalate).
    pub fn crash_loop(mut self, crash_loop: CrashLoop) -> SupervisorBuilder {
        self.crash_loop = crash_loop;
        self
    }

    /// Sets the strategy.
    pub fn strategy(mut self, strategy: Strategy) -> SupervisorBuilder {
        self.strategy = strategy;
        self
    }

    /// Sets the restart intensity: more than `max_restarts` within `period` escalates.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> SupervisorBuilder {
        self.intensity = Intensity {
            max_restarts,
            period,
        };
        self
    }

    /// Sets the auto-shutdown policy for significant children.
    pub fn auto_shutdown(mut self, auto_shutdown: AutoShutdown) -> SupervisorBuilder {
        self.auto_shutdown = auto_shutdown;
        self
    }

    /// Adds a child; children start in the order they are added.
    pub fn child(mut self, child: ChildSpec) -> SupervisorBuilder {
        self.children.push(child);
        self
    }

    /// Checks the declaration and builds the spec.
    ///
    /// # Errors
    /// [`Error::DuplicateChild`](crate::Error::DuplicateChild) naming the repeated id, or
    /// [`Error::InvalidIntensity`](crate::Error::InvalidIntensity) for a zero period.
    pub fn build(self) -> Result<SupervisorSpec, crate::Error> {
        let supervisor = self.id.to_string();
        if self.intensity.period.is_zero() {
            return Err(crate::Error::InvalidIntensity { supervisor });
        }
        for (index, child) in self.children.iter().enumerate() {
            if self.children[..index]
                .iter()
                .any(|earlier| earlier.id == child.id)
            {
                return Err(crate::Error::DuplicateChild {
                    supervisor,
                    child: child.id.to_string(),
                });
            }
        }
        let shared = SupervisorShared::new(self.id.clone());
        Ok(SupervisorSpec {
            id: self.id,
            strategy: self.strategy,
            intensity: self.intensity,
            auto_shutdown: self.auto_shutdown,
            children: self.children,
            max_children: self.max_children,
            crash_loop: self.crash_loop,
            shared,
        })
    }
}
