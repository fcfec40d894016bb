//! Workers: the trait game logic implements, and the ractor actor that hosts each incarnation.

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc};

use futures_util::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::{
    exit::{Abandon, ChildFailure, ExitReason, panic_message},
    mailbox::{ChildRef, Slot, Wake},
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
    worker: W,
    slot: Arc<Slot<W::Message>>,
}

impl<W: Worker> Host<W> {
    pub(crate) fn new(worker: W, slot: Arc<Slot<W::Message>>) -> Self {
        Host { worker, slot }
    }
}

pub(crate) struct HostState<W: Worker> {
    context: WorkerContext<W::Message>,
    state: W::State,
}

fn failure(reason: ExitReason) -> ActorProcessingErr {
    Box::new(ChildFailure(reason))
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
        let context = WorkerContext {
            slot: self.slot.clone(),
            incarnation: self.slot.incarnations() + 1,
            myself: Some(myself),
        };
        let started = AssertUnwindSafe(self.worker.start(&context))
            .catch_unwind()
            .await;
        match started {
            Ok(Ok(state)) => Ok(HostState { context, state }),
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
        state.context.incarnation = self.slot.attach(myself);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Wake>,
        _: Wake,
        state: &mut HostState<W>,
    ) -> Result<(), ActorProcessingErr> {
        // The one `Wake` of this incarnation: it drains here until it is to stop (see the
        // mailbox's module documentation).
        // Messages handled since this task last gave its thread up.
        let mut handled = 0;
        loop {
            if self.slot.is_retired() {
                // Its handle closed the mailbox: nothing can reach this incarnation any more.
                myself.stop(None);
                return Ok(());
            }
            if self.slot.is_interrupted() {
                // A stop is queued for it: ractor's loop takes it from here.
                return Ok(());
            }
            while handled < DRAIN_BATCH {
                let Some(message) = self.slot.pop() else {
                    break;
                };
                // The message is now owned by this call: if it crashes, it is not redelivered.
                let outcome = AssertUnwindSafe(self.worker.handle(
                    &state.context,
                    message,
                    &mut state.state,
                ))
                .catch_unwind()
                .await;
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        return Err(failure(ExitReason::Error(error.to_string())));
                    }
                    Err(panic) => return Err(failure(ExitReason::Panic(panic_message(&*panic)))),
                }
                handled += 1;
            }
            if handled == DRAIN_BATCH {
                // Work is left: the thread's other tasks get their turn first.
                tokio::task::yield_now().await;
                handled = 0;
            } else if self.slot.idle().await {
                // It waited: the thread ran its other tasks meanwhile. A wait that found work
                // at once does not count, or a steady trickle would never yield.
                handled = 0;
            }
        }
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Wake>,
        state: &mut HostState<W>,
    ) -> Result<(), ActorProcessingErr> {
        self.slot.detach(myself.get_id());
        let stopped = AssertUnwindSafe(self.worker.stop(&state.context, &mut state.state))
            .catch_unwind()
            .await;
        stopped.map_err(|panic| failure(ExitReason::Panic(panic_message(&*panic))))
    }
}
