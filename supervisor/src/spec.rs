//! Declarations: child specs, restart and shutdown policies, backoff, intensity, strategies.

use std::{any::Any, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorId, SpawnErr};

use crate::{
    exit::{self, ExitReason, panic_message},
    mailbox::{ChildRef, DEFAULT_MAILBOX_CAPACITY, MailboxClosed, Overflow, Slot},
    supervisor::{SupervisorActor, SupervisorArgs, SupervisorRef, Tree},
    worker::{Host, Worker},
};

/// When a child that exited is restarted (OTP restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    /// Always.
    #[default]
    Permanent,
    /// Only after an abnormal exit (panic, error, kill, failed start, escalation).
    Transient,
    /// Never; the child is removed when it exits.
    Temporary,
}

/// How a child is stopped (OTP shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Kill at once; the current message is abandoned and `stop` does not run.
    BrutalKill,
    /// Ask to stop (after the current message), wait this long, then kill.
    Timeout(Duration),
    /// Ask to stop and wait as long as it takes (the default for supervisors).
    Infinity,
}

/// The default shutdown of a worker: ask, then kill after five seconds.
pub const DEFAULT_WORKER_SHUTDOWN: Shutdown = Shutdown::Timeout(Duration::from_secs(5));

/// What a supervisor does to its other children when one must be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Restart only the child that exited.
    #[default]
    OneForOne,
    /// Stop all other children in reverse start order, then restart all in start order.
    OneForAll,
    /// Stop the children started after the one that exited (in reverse), then restart it and
    /// them in start order.
    RestForOne,
}

impl Strategy {
    /// The OTP name, used in traces.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
            Strategy::RestForOne => "rest_for_one",
        }
    }
}

/// When exits of significant children end their supervisor (OTP `auto_shutdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoShutdown {
    /// Significant children are ignored.
    #[default]
    Never,
    /// The supervisor shuts down when any significant child exits without restart.
    AnySignificant,
    /// The supervisor shuts down when all significant children have exited without restart.
    AllSignificant,
}

/// Restart intensity: more than `max_restarts` within `period` escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts allowed within the period.
    pub max_restarts: u32,
    /// The sliding window.
    pub period: Duration,
}

impl Default for Intensity {
    /// Elixir's default, 3 restarts in 5 seconds: OTP's 1 in 5 s escalates on the second crash
    /// of any child, too eager for a game node where one bad entity should not take down its
    /// siblings; more than 3 in 5 s is a crash loop worth escalating.
    fn default() -> Self {
        Intensity {
            max_restarts: 3,
            period: Duration::from_secs(5),
        }
    }
}

/// What a dynamic supervisor does when one child exceeds its restart intensity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrashLoop {
    /// OTP: stop every child and escalate to the parent.
    #[default]
    Escalate,
    /// Give up on that child alone: it is removed and its handle closed; its siblings run on.
    /// For game entities, where one poisoned room must not take down every room.
    RemoveChild,
}

/// Exponential restart backoff (Akka's `restartWithBackoff`).
///
/// The n-th consecutive restart waits `min * 2^n`, capped at `max`, stretched by up to
/// `random_factor` (0.2 means up to 20% longer) so that many children crashing together do not
/// restart in lockstep. A child that ran for `reset_after` since its last start counts from zero
/// again. Messages sent during the wait are held in its bounded mailbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First delay.
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Random stretch, 0.0 to 1.0.
    pub random_factor: f64,
    /// Quiet time after which the next restart uses `min` again.
    pub reset_after: Duration,
}

impl Backoff {
    /// Backoff between `min` and `max`, random factor 0.2, reset after running for `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            random_factor: 0.2,
            reset_after: max,
        }
    }

    /// The delay before restart number `attempt` (0-based), with `noise` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, noise: f64) -> Duration {
        let base = self
            .min
            .saturating_mul(2u32.saturating_pow(attempt.min(31)))
            .min(self.max);
        base.mul_f64(1.0 + self.random_factor.clamp(0.0, 1.0) * noise.clamp(0.0, 1.0))
    }
}

/// Game attributes a child carries into its restart traces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GameAttributes {
    /// `game.session.id`.
    pub session_id: Option<Arc<str>>,
    /// `game.world.zone`.
    pub zone: Option<Arc<str>>,
    /// `game.entity.kind`.
    pub entity_kind: Option<Arc<str>>,
    /// `game.entity.key`.
    pub entity_key: Option<Arc<str>>,
}

/// Whether a child is a worker or a supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildKind {
    /// A [`Worker`].
    Worker,
    /// A nested supervisor.
    Supervisor,
}

type StartFn =
    Arc<dyn Fn(ActorCell, Tree) -> BoxFuture<'static, Result<ActorCell, ExitReason>> + Send + Sync>;

/// What the supervisor needs of a worker's slot without knowing its message type.
pub(crate) trait SlotControl: Send + Sync {
    fn name(&self, id: &Arc<str>);
    fn detach(&self, actor: ActorId);
    fn close(&self, why: &MailboxClosed);
    fn reopen(&self);
    fn depth(&self) -> usize;
    fn take_trace_parent(&self) -> Option<tracing::Span>;
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
    fn take_trace_parent(&self) -> Option<tracing::Span> {
        Slot::take_trace_parent(self)
    }
}

/// How to start a child, again and again: a worker factory with its mailbox, or a nested
/// supervisor's spec.
#[derive(Clone)]
pub struct Start {
    pub(crate) kind: ChildKind,
    start: StartFn,
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
                    Err(error) => Err(spawn_failure(error)),
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

    /// Starts a nested supervisor.
    pub fn supervisor(spec: crate::SupervisorSpec) -> Start {
        let nested = Box::new(spec.clone());
        let start: StartFn = Arc::new(move |parent, tree| {
            let spec = spec.clone();
            Box::pin(async move {
                let args = SupervisorArgs { spec, tree };
                match Actor::spawn_linked(None, SupervisorActor, args, parent).await {
                    Ok((actor, _)) => Ok(actor.get_cell()),
                    Err(error) => Err(spawn_failure(error)),
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

    /// The nested supervisor's handle, if this starts one.
    pub(crate) fn nested_handle(&self) -> Option<SupervisorRef> {
        self.nested.as_ref().map(|spec| spec.handle())
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

fn spawn_failure(error: SpawnErr) -> ExitReason {
    match error {
        SpawnErr::StartupFailed(reason) => match exit::from_failure(&*reason) {
            ExitReason::StartFailed(reason) => ExitReason::StartFailed(reason),
            ExitReason::Abandoned(reason) => ExitReason::Abandoned(reason),
            other => ExitReason::StartFailed(other.to_string()),
        },
        other => ExitReason::StartFailed(other.to_string()),
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
/// Cloning a spec shares its children's mailboxes and its [`SupervisorRef`]: a nested
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
    handle: SupervisorRef,
}

impl SupervisorSpec {
    /// The supervisor's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The stable handle this supervisor will have once started.
    pub fn handle(&self) -> SupervisorRef {
        self.handle.clone()
    }

    /// Starts the tree: children in declaration order, each fully started before the next.
    ///
    /// # Errors
    /// [`Error::StartFailed`](crate::Error::StartFailed) naming the first child that failed to
    /// start (the ones before it are stopped again, in reverse), or
    /// [`Error::Spawn`](crate::Error::Spawn).
    pub async fn start(self) -> Result<SupervisorRef, crate::Error> {
        crate::supervisor::start_root(self).await
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
    /// [`SupervisorRef::start_child`], at most `max_children` at once. Its restart intensity is
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
        let handle = SupervisorRef::new(self.id.clone());
        Ok(SupervisorSpec {
            id: self.id,
            strategy: self.strategy,
            intensity: self.intensity,
            auto_shutdown: self.auto_shutdown,
            children: self.children,
            max_children: self.max_children,
            crash_loop: self.crash_loop,
            handle,
        })
    }
}
