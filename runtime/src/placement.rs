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
    sync::{Arc, Weak},
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
    /// On the gateway event loop of the connection whose input activated it (else, activated
    /// from anywhere else, on the tree's runtime), for as long as that incarnation runs; a
    /// restart after a crash stays there. The input, the handler and its reply to that session
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
    /// Cleared by the gateway's shutdown: the loops take no new entity after it, and end
    /// once those they run have ended.
    open: std::sync::atomic::AtomicBool,
}

#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
impl Loops {
    pub(crate) fn new(stop: impl Fn() + Send + Sync + 'static) -> Arc<Loops> {
        Arc::new(Loops {
            stop: Box::new(stop),
            open: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Takes no new entity from now on (the gateway is shutting down).
    pub(crate) fn close(&self) {
        self.open.store(false, std::sync::atomic::Ordering::Release);
    }

    /// The loops, if they still take new entities.
    fn open(loops: &Weak<Loops>) -> Option<Arc<Loops>> {
        loops
            .upgrade()
            .filter(|loops| loops.open.load(std::sync::atomic::Ordering::Acquire))
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        (self.stop)();
    }
}

struct EventLoop {
    runtime: tokio::runtime::Handle,
    loops: Weak<Loops>,
}

thread_local! {
    static CURRENT: RefCell<Option<EventLoop>> = const { RefCell::new(None) };
}

#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
/// Registers the calling thread as a gateway event loop running `runtime`.
pub(crate) fn enter(runtime: tokio::runtime::Handle, loops: Weak<Loops>) {
    CURRENT.with(|current| *current.borrow_mut() = Some(EventLoop { runtime, loops }));
}

/// A gateway's event loops, as a kind it hosts sees them: where each activation of the kind
/// starts, in turn, while the gateway runs.
pub(crate) struct HostLoops {
    runtimes: Vec<tokio::runtime::Handle>,
    loops: Weak<Loops>,
}

#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
impl HostLoops {
    pub(crate) fn new(runtimes: Vec<tokio::runtime::Handle>, loops: Weak<Loops>) -> Arc<Self> {
        Arc::new(HostLoops { runtimes, loops })
    }

    /// The loop activation number `turn` starts on, with what keeps it running, unless the
    /// gateway is shutting down.
    pub(crate) fn pick(
        &self,
        turn: u64,
    ) -> Option<(tokio::runtime::Handle, Arc<dyn Any + Send + Sync>)> {
        let count = u64::try_from(self.runtimes.len()).ok().filter(|&n| n > 0)?;
        let runtime = self.runtimes.get(usize::try_from(turn % count).ok()?)?;
        let loops: Arc<dyn Any + Send + Sync> = Loops::open(&self.loops)?;
        Some((runtime.clone(), loops))
    }
}

/// The event loop the caller runs on, with what keeps it running, if the caller is on one
/// whose gateway is not shutting down.
pub(crate) fn current_loop() -> Option<(tokio::runtime::Handle, Arc<dyn Any + Send + Sync>)> {
    CURRENT.with(|current| {
        let current = current.borrow();
        let event_loop = current.as_ref()?;
        let loops: Arc<dyn Any + Send + Sync> = Loops::open(&event_loop.loops)?;
        Some((event_loop.runtime.clone(), loops))
    })
}
