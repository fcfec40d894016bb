//! Where a kind's entities run: on the supervision tree's runtime (the default), on the
//! gateway event loop of the connection whose input activated them, or spread over the event
//! loops of a gateway that hosts the kind.
//!
//! A gateway event loop registers itself on its thread ([`enter`]) with a weak reference to
//! what keeps the loops running ([`Loops`]); an entity placed there holds a strong one while an
//! incarnation of it runs, so a gateway shut down before its tree keeps its loops (not its
//! connections) until the last placed entity has ended and saved its state.

use std::{
    any::Any,
    cell::RefCell,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
};

/// Where an entity kind's incarnations run ([`KindConfig::placement`](crate::KindConfig)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// On the runtime its kind was started on (the tree's), whoever activates it; or, when a
    /// running gateway hosts the kind ([`GatewayBuilder::hosts`]), on that gateway's event
    /// loops, one loop per activation in turn.
    ///
    /// [`GatewayBuilder::hosts`]: crate::gateway::GatewayBuilder::hosts
    #[default]
    Tree,
    /// On the gateway event loop of the connection whose input activated it (activated by an
    /// entity running on a loop, on that loop; from anywhere else, or once the gateway is
    /// shutting down, on the tree's runtime), for as long as that incarnation runs; a restart
    /// after a crash stays there. The input, the handler and its reply to that session
    /// then run on one thread with no hand-over between threads. For entities that live with
    /// a session and whose handlers are short (a player): a handler that computes for long
    /// delays every connection of its loop. Rooms and other entities shared by sessions of
    /// many loops belong on the tree, or on a hosting gateway's loops.
    SessionLoop,
}

/// Keeps a gateway's event loops running: dropping the last reference stops them.
#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
pub(crate) struct Loops {
    stop: Box<dyn Fn() + Send + Sync>,
    /// The loops' runtimes, where the kinds the gateway hosts start their entities.
    runtimes: Vec<tokio::runtime::Handle>,
    /// Cleared by the gateway's shutdown: the loops take no new entity after it, and end
    /// once those they run have ended.
    open: Arc<AtomicBool>,
}

#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
impl Loops {
    pub(crate) fn new(
        runtimes: Vec<tokio::runtime::Handle>,
        stop: impl Fn() + Send + Sync + 'static,
    ) -> Arc<Loops> {
        Arc::new(Loops {
            stop: Box::new(stop),
            runtimes,
            open: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Takes no new entity from now on (the gateway is shutting down).
    pub(crate) fn close(&self) {
        self.open.store(false, Ordering::Release);
    }

    /// A reference that hands the loops to new entities while they are open, without keeping
    /// them running.
    pub(crate) fn opening(self: &Arc<Self>) -> Opening {
        Opening {
            loops: Arc::downgrade(self),
            open: self.open.clone(),
        }
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        (self.stop)();
    }
}

/// A gateway's event loops as a new entity may take them: while the gateway runs. What a loop
/// thread registers ([`enter`]) and what a kind a gateway hosts holds.
#[derive(Clone)]
pub(crate) struct Opening {
    loops: Weak<Loops>,
    open: Arc<AtomicBool>,
}

impl Opening {
    /// The loops, with a hold on them, if they still take new entities. The flag is read
    /// before the upgrade, so once the shutdown has closed them nothing new takes a hold; an
    /// activation that read it just before keeps them running as any placed entity does.
    fn take(&self) -> Option<Arc<Loops>> {
        if self.open.load(Ordering::Acquire) {
            self.loops.upgrade()
        } else {
            None
        }
    }

    /// The loop activation number `turn` starts on (a kind's activations take the loops in
    /// turn), with what keeps it running, unless the gateway is shutting down.
    pub(crate) fn pick(
        &self,
        turn: u64,
    ) -> Option<(tokio::runtime::Handle, Arc<dyn Any + Send + Sync>)> {
        let loops = self.take()?;
        let count = u64::try_from(loops.runtimes.len())
            .ok()
            .filter(|&n| n > 0)?;
        let runtime = loops
            .runtimes
            .get(usize::try_from(turn % count).ok()?)?
            .clone();
        let hold: Arc<dyn Any + Send + Sync> = loops;
        Some((runtime, hold))
    }
}

struct EventLoop {
    runtime: tokio::runtime::Handle,
    loops: Opening,
}

thread_local! {
    static CURRENT: RefCell<Option<EventLoop>> = const { RefCell::new(None) };
}

#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
/// Registers the calling thread as a gateway event loop running `runtime`.
pub(crate) fn enter(runtime: tokio::runtime::Handle, loops: Opening) {
    CURRENT.with(|current| *current.borrow_mut() = Some(EventLoop { runtime, loops }));
}

/// The event loop the caller runs on, with what keeps it running, if the caller is on one
/// whose gateway is not shutting down.
pub(crate) fn current_loop() -> Option<(tokio::runtime::Handle, Arc<dyn Any + Send + Sync>)> {
    CURRENT.with(|current| {
        let current = current.borrow();
        let event_loop = current.as_ref()?;
        let hold: Arc<dyn Any + Send + Sync> = event_loop.loops.take()?;
        Some((event_loop.runtime.clone(), hold))
    })
}
