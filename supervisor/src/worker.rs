//! Workers: the trait game logic implements, and the ractor actor that hosts each incarnation.

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc};

use futures_util::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::Instrument;

use crate::{
    exit::{Abandon, ChildFailure, ExitReason, panic_message},
    mailbox::{ChildRef, Draining, Kept, Slot, Wake},
};

/// The error a worker's handler returns; any error type converts into it with `?`.
pub type HandlerError = ActorProcessingErr;

/// How many messages an incarnation handles before it yields to the other tasks of its thread
/// and looks for a stop request, so neither is stuck behind a long queue.
const DRAIN_BATCH: usize = 64;

/// A supervised worker: an actor whose address, mailbox and supervision Garrison manages.
///
/// A fresh value is made by the child's factory for every incarnation; `start` builds the state
/// (a failure or panic there is a failed start), `handle` takes one message at a time (a panic
/// or error there crashes this incarnation, and only the message being handled is lost), and
/// `stop` runs on an orderly stop.
pub trait Worker: Send + Sync + Sized + 'static {
    /// The messages the worker accepts.
    type Message: Send + 'static;
    /// The state an incarnation owns.
    type State: Send + 'static;

    /// Builds the incarnation's state.
    fn start(
        &self,
        context: &WorkerContext<Self::Message>,
    ) -> impl Future<Output = Result<Self::State, HandlerError>> + Send;

    /// Handles one message.
    fn handle(
        &self,
        context: &WorkerContext<Self::Message>,
        message: Self::Message,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Runs when the incarnation stops in order (not after a crash or a kill).
    fn stop(
        &self,
        context: &WorkerContext<Self::Message>,
        state: &mut Self::State,
    ) -> impl Future<Output = ()> + Send {
        let _ = (context, state);
        async {}
    }
}

/// What a worker knows about itself.
pub struct WorkerContext<M> {
    slot: Arc<Slot<M>>,
    incarnation: u64,
    myself: Option<ActorRef<Wake>>,
}

impl<M: Send + 'static> WorkerContext<M> {
    /// The worker's own stable handle (to give to others, or to send itself a message).
    pub fn handle(&self) -> ChildRef<M> {
        ChildRef::new(self.slot.clone())
    }

    /// The child id.
    pub fn id(&self) -> &str {
        self.slot.id()
    }

    /// Which incarnation this is: 1 for the first start, +1 per restart.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Records the span of the message being handled: if handling it crashes the worker, the
    /// supervisor's restart span becomes a child of this span, so the restart shows in the
    /// message's trace. Call [`WorkerContext::clear_trace_parent`] once the message is handled:
    /// a span held here stays open, and unexported, until released.
    pub fn set_trace_parent(&self, span: &tracing::Span) {
        self.slot.set_trace_parent(span.clone());
    }

    /// Releases the span recorded by [`WorkerContext::set_trace_parent`].
    pub fn clear_trace_parent(&self) {
        drop(self.slot.take_trace_parent());
    }

    /// Asks this incarnation to stop normally after the current message (a `transient` child is
    /// then not restarted).
    pub fn stop(&self) {
        if let Some(myself) = &self.myself {
            myself.stop(None);
            self.slot.interrupt();
        }
    }
}

/// The ractor actor hosting one incarnation of `W`.
pub(crate) struct Host<W: Worker> {
    worker: Arc<W>,
    slot: Arc<Slot<W::Message>>,
}

impl<W: Worker> Host<W> {
    pub(crate) fn new(worker: W, slot: Arc<Slot<W::Message>>) -> Self {
        Host {
            worker: Arc::new(worker),
            slot,
        }
    }
}

/// An incarnation's context and state.
struct Incarnation<W: Worker> {
    context: WorkerContext<W::Message>,
    state: W::State,
}

/// Where an incarnation waits between its drain task's runs: out of ractor's state, which ractor
/// hands to the supervisor in a kill's event, so the supervisor drops it (`Slot::discard`) before
/// it starts the next incarnation.
type Held<W> = Arc<std::sync::Mutex<Option<Incarnation<W>>>>;

fn held<W: Worker>(held: &Held<W>) -> std::sync::MutexGuard<'_, Option<Incarnation<W>>> {
    held.lock().unwrap_or_else(|poison| poison.into_inner())
}

pub(crate) struct HostState<W: Worker> {
    /// Empty while the drain task holds the incarnation, and once it is dropped.
    incarnation: Held<W>,
    /// Lets the supervisor drop the incarnation, until this state goes.
    _kept: Kept,
}

fn failure(reason: ExitReason) -> ActorProcessingErr {
    Box::new(ChildFailure(reason))
}

/// Aborts the drain task when ractor drops the handler awaiting it (a kill): the task then ends
/// at its next await, and the supervisor waits for that before it starts another incarnation.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why [`drain`] returned.
enum Left {
    /// The incarnation is to stop (interrupted, or its mailbox retired).
    Stop,
    /// The queue is empty (only when asked not to wait).
    Empty,
}

/// Handles the queue's messages until the incarnation is to stop, waiting on the slot's waker
/// when the queue is empty, or, with `wait` false, returning then.
async fn drain<W: Worker>(
    worker: &W,
    slot: &Slot<W::Message>,
    myself: &ActorRef<Wake>,
    incarnation: &mut Incarnation<W>,
    wait: bool,
) -> Result<Left, ActorProcessingErr> {
    // Messages handled since this task last gave its thread up.
    let mut handled = 0;
    loop {
        if slot.is_retired() {
            // Its handle closed the mailbox: nothing can reach this incarnation any more.
            myself.stop(None);
            return Ok(Left::Stop);
        }
        if slot.is_interrupted() {
            // A stop is queued for it: ractor's loop takes it from here.
            return Ok(Left::Stop);
        }
        while handled < DRAIN_BATCH {
            let Some(message) = slot.pop() else {
                break;
            };
            // The message is now owned by this call: if it crashes, it is not redelivered.
            let outcome = AssertUnwindSafe(worker.handle(
                &incarnation.context,
                message,
                &mut incarnation.state,
            ))
            .catch_unwind()
            .await;
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(failure(ExitReason::Error(error.to_string()))),
                Err(panic) => return Err(failure(ExitReason::Panic(panic_message(&*panic)))),
            }
            handled += 1;
        }
        if handled == DRAIN_BATCH {
            // Work is left: the thread's other tasks get their turn first.
            tokio::task::yield_now().await;
            handled = 0;
        } else if !wait {
            return Ok(Left::Empty);
        } else if slot.idle().await {
            // It waited: the thread ran its other tasks meanwhile. A wait that found work
            // at once does not count, or a steady trickle would never yield.
            handled = 0;
        }
    }
}

/// The incarnation's drain task: [`drain`] until it is to stop, then hands the incarnation back.
/// A task of its own, so that a message wakes this loop alone and not ractor's actor loop and
/// ports around the handler.
async fn drain_task<W: Worker>(
    worker: Arc<W>,
    slot: Arc<Slot<W::Message>>,
    myself: ActorRef<Wake>,
    draining: Draining,
    incarnation: Incarnation<W>,
) -> Result<Incarnation<W>, ActorProcessingErr> {
    // Locals drop in reverse: an aborted or crashed task drops the worker's state before it says
    // it ended, and before the supervisor hears of a crash.
    let _draining = draining;
    let mut incarnation = incarnation;
    drain(&*worker, &slot, &myself, &mut incarnation, true).await?;
    Ok(incarnation)
}

impl<W: Worker> Actor for Host<W> {
    type Msg = Wake;
    type State = HostState<W>;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Wake>,
        _: (),
    ) -> Result<HostState<W>, ActorProcessingErr> {
        self.slot.clear_interrupt();
        let myself_id = myself.get_id();
        let context = WorkerContext {
            slot: self.slot.clone(),
            incarnation: self.slot.incarnations() + 1,
            myself: Some(myself),
        };
        let started = AssertUnwindSafe(self.worker.start(&context))
            .catch_unwind()
            .await;
        match started {
            Ok(Ok(state)) => {
                let incarnation: Held<W> =
                    Arc::new(std::sync::Mutex::new(Some(Incarnation { context, state })));
                let kept = self.slot.keep(myself_id, {
                    let incarnation = incarnation.clone();
                    move || {
                        let taken = held(&incarnation).take();
                        drop(taken);
                    }
                });
                Ok(HostState {
                    incarnation,
                    _kept: kept,
                })
            }
            Ok(Err(error)) => Err(failure(match error.downcast_ref::<Abandon>() {
                Some(Abandon(reason)) => ExitReason::Abandoned(reason.clone()),
                None => ExitReason::StartFailed(error.to_string()),
            })),
            Err(panic) => Err(failure(ExitReason::StartFailed(format!(
                "panic: {}",
                panic_message(&*panic)
            )))),
        }
    }

    async fn post_start(
        &self,
        myself: ActorRef<Wake>,
        state: &mut HostState<W>,
    ) -> Result<(), ActorProcessingErr> {
        let incarnation = self.slot.attach(myself);
        if let Some(running) = held(&state.incarnation).as_mut() {
            running.context.incarnation = incarnation;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Wake>,
        _: Wake,
        state: &mut HostState<W>,
    ) -> Result<(), ActorProcessingErr> {
        // The incarnation's `Wake` (see the mailbox's module documentation).
        let Some(mut incarnation) = held(&state.incarnation).take() else {
            return Err(failure(ExitReason::Error(
                "the incarnation was lost with its drain task".to_owned(),
            )));
        };
        // What woke it is handled here first (an activation's first message goes without
        // waiting for a task to be spawned); a crash drops the state as it returns.
        match drain(&*self.worker, &self.slot, &myself, &mut incarnation, false).await? {
            Left::Stop => {
                *held(&state.incarnation) = Some(incarnation);
                return Ok(());
            }
            Left::Empty => {}
        }
        // Then its drain task runs until it is to stop.
        let draining = self.slot.draining(myself.get_id());
        let mut task = AbortOnDrop(tokio::spawn(
            drain_task(
                self.worker.clone(),
                self.slot.clone(),
                myself,
                draining,
                incarnation,
            )
            // The worker's logs keep ractor's span of this actor.
            .instrument(tracing::Span::current()),
        ));
        match (&mut task.0).await {
            Ok(Ok(incarnation)) => {
                *held(&state.incarnation) = Some(incarnation);
                Ok(())
            }
            Ok(Err(crashed)) => Err(crashed),
            Err(error) => Err(failure(match error.try_into_panic() {
                Ok(panic) => ExitReason::Panic(panic_message(&*panic)),
                Err(error) => ExitReason::Error(format!("its drain task ended: {error}")),
            })),
        }
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Wake>,
        state: &mut HostState<W>,
    ) -> Result<(), ActorProcessingErr> {
        self.slot.detach(myself.get_id());
        let Some(mut incarnation) = held(&state.incarnation).take() else {
            return Ok(());
        };
        let stopped = AssertUnwindSafe(
            self.worker
                .stop(&incarnation.context, &mut incarnation.state),
        )
        .catch_unwind()
        .await;
        // The worker's state goes now, not with ractor's stop event to the supervisor, which
        // may handle it after the next incarnation started.
        drop(incarnation);
        stopped.map_err(|panic| failure(ExitReason::Panic(panic_message(&*panic))))
    }
}
