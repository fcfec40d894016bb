//! Child mailboxes that outlive incarnations, and the stable handles that send to them.
//!
//! A supervised worker's messages do not live in ractor's (unbounded, per-incarnation) mailbox:
//! they live in a bounded queue owned by the child's slot, which every incarnation drains. The
//! queue allocates as messages arrive and gives memory back when drained, so an idle child costs
//! no queue memory whatever its bound (a preallocated ring of 256 envelopes would cost ~20 KiB
//! per idle entity). The
//! ractor actor receives one [`Wake`] when an incarnation starts; its handler drains the queue
//! until it first runs empty, then spawns the incarnation's drain task and awaits it. That task
//! drains the queue and waits on the slot's waker when it is empty: a send to an idle child is a
//! queue push and one wake of that task, not a message through ractor's channels, nor a poll of
//! its actor loop and ports. The task ends only when the incarnation is to stop (a stop request
//! sets the slot's interrupt flag and wakes it); a kill drops ractor's handler, which aborts the
//! task, and the supervisor waits for the task to end (`Drains::drained`) before it reports the
//! child stopped. A crash therefore loses
//! only the message being handled; the queue, and every [`ChildRef`] to it, carry over to the
//! next incarnation.
//!
//! The bound counts every message not yet handled. A mailbox of 256 or more gives the room its
//! host frees back every 16 messages handled, so a sender may be refused up to 15 messages short
//! of the bound (it never goes past it); a smaller one gives it back at once.

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence},
    },
};

use futures_util::task::AtomicWaker;
use ractor::ActorRef;

use crate::{Error, ExitReason};

/// Default mailbox capacity of a worker.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 1024;

/// The only message a hosting ractor actor receives: "start draining your queue" (once per
/// incarnation, see the module documentation).
#[derive(Debug)]
pub(crate) struct Wake;

// With ractor's `cluster` feature its `Message` trait has no blanket impl; a `Wake` never
// leaves its node, so the defaults (not serializable) are right.
#[cfg(feature = "cluster")]
impl ractor::Message for Wake {}

/// What a full mailbox does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Refuse the new message and hand it back to the sender ([`SendError::Full`]).
    #[default]
    Reject,
    /// Accept the new message and evict the oldest queued one, handing *that* back
    /// ([`Sent::Evicted`]); for state-like messages where only the latest matters.
    DropOldest,
}

/// A message that could not be queued, handed back to the sender.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError<M> {
    /// The mailbox is full and its policy is [`Overflow::Reject`].
    #[error("mailbox full")]
    Full(M),
    /// The child is gone for good (temporary child exited, or its supervisor stopped).
    #[error("child is closed")]
    Closed(M),
}

impl<M> SendError<M> {
    /// The message that was not queued.
    pub fn into_inner(self) -> M {
        match self {
            SendError::Full(message) | SendError::Closed(message) => message,
        }
    }
}

/// What happened to a message that was queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent<M> {
    /// Queued.
    Queued,
    /// Queued, evicting this older message ([`Overflow::DropOldest`]).
    Evicted(M),
}

/// Why a mailbox closed for good; handed to its [undelivered hook](ChildRef::on_undelivered)
/// with every message still queued in it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MailboxClosed {
    /// The child exited and is not restarted (a temporary child, or a dynamic child that ended),
    /// or its (re)start failed or was abandoned; the exit says which.
    Exited(ExitReason),
    /// A dynamic supervisor gave up on the child after it exceeded its restart intensity
    /// ([`CrashLoop::RemoveChild`](crate::CrashLoop::RemoveChild)); its last exit.
    GaveUp(ExitReason),
    /// The child was terminated (`terminate_child` on a dynamic supervisor).
    Terminated,
    /// Its supervisor stopped for good: the tree shut down or escalated, or a dynamic
    /// supervisor stopped (its children do not outlive it).
    Shutdown,
    /// [`ChildRef::close`] was called, with this reason.
    ByHandle(String),
}

impl fmt::Display for MailboxClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MailboxClosed::Exited(reason) => {
                write!(f, "the child ended ({reason}) and is not restarted")
            }
            MailboxClosed::GaveUp(reason) => write!(
                f,
                "the supervisor gave up on the child after too many restarts (last exit: {reason})"
            ),
            MailboxClosed::Terminated => f.write_str("the child was terminated"),
            MailboxClosed::Shutdown => f.write_str("the supervisor stopped"),
            MailboxClosed::ByHandle(reason) => write!(f, "the mailbox was closed: {reason}"),
        }
    }
}

/// What is done with the messages a mailbox still holds when it closes.
type UndeliveredHook<M> = Box<dyn Fn(M, &MailboxClosed) + Send + Sync>;

struct QueueState<M> {
    items: VecDeque<M>,
    /// Set when the child is gone for good. Under the same lock as the items, so a push either
    /// lands before the close (and is handed to the undelivered hook) or is refused.
    closed: bool,
}

/// A bounded FIFO that allocates on demand, in two halves so senders and the host do not fight
/// over one lock per message: senders push to `state`; the host pops from `taken`, and when that
/// is empty swaps the two buffers under both locks (O(1), nothing moved). Only Garrison's own
/// code runs under either lock (never a handler, never a hook).
///
/// Lock order: `state`, then `taken`; the host never waits for `state` while holding `taken`.
/// Messages in `taken` stay in the slot, not in a host's future: a host that crashes or is
/// killed mid-batch leaves them to the next incarnation, in order.
struct Queue<M> {
    state: CacheLine<Senders<M>>,
    /// The host's half: the oldest messages, in order, not yet handled. On a cache line of its
    /// own: sharing one with `state` made every send and every pop fight over it.
    taken: CacheLine<Mutex<VecDeque<M>>>,
    /// What senders read of the host's half on each push, and the bound.
    published: CacheLine<Published>,
}

/// The line a sender reads on each push besides its own, which the host writes when it
/// publishes (the bound is here, not on the senders' line, because the host reads it on each
/// pop: there it would pull the senders' line over on every message).
struct Published {
    /// `taken`'s length as the host last published it, read by senders under `state` to keep
    /// the bound over both halves. Written under `taken` and, when it grows, also under
    /// `state`; it is never smaller than the truth, so the bound holds. The host publishes a
    /// shrink every [`PUBLISH_EVERY`] pops (each pop on a small mailbox), not on every one: a
    /// sender reads this line on each push.
    /// Zero exactly when `taken` is empty: every change that empties it stores zero.
    taken_len: AtomicUsize,
    capacity: usize,
}

/// The senders' half, and its length for the host to read without the lock, with all else a send
/// writes or reads only here (the overflow policy, the host's wake) and the flags the host's
/// wait reads. A send touches this line and `published`, nothing more of the slot; the host's
/// wait, these two as well (with thousands of entities, each line touched per message is a
/// likely cache miss).
struct Senders<M> {
    items: Mutex<QueueState<M>>,
    /// `items.len()`, stored under the lock whenever it changes: the host looks at it before
    /// taking the lock, so a pop that finds nothing and the host's wait take no lock at all.
    len: AtomicUsize,
    overflow: Overflow,
    /// False only while the host waits for work (or is about to); see [`Slot::wake`].
    scheduled: AtomicBool,
    /// The running incarnation's task, registered while it waits for work.
    parked: AtomicWaker,
    /// The running incarnation is to return to ractor's loop, where a stop is queued for it.
    interrupted: AtomicBool,
    /// Closed by its handle ([`ChildRef::close`]): an incarnation stops once it sees it.
    retired: AtomicBool,
}

/// Aligns its value to its own cache line (128 bytes: two lines on x86, which prefetches in
/// pairs, and one on recent ARM).
#[repr(align(128))]
struct CacheLine<T>(T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// How many pops the host makes before telling senders the room they freed, on a mailbox of at
/// least [`PUBLISH_EVERY`] x 16 messages (a sender is refused at most this many early).
const PUBLISH_EVERY: usize = 16;

/// A drained queue keeping more than this many slots of capacity gives them back.
const RETAINED_CAPACITY: usize = 16;

/// Why a push did not queue its message.
enum Refused<M> {
    Full(M),
    Closed(M),
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // No handler runs under these locks, so they cannot be poisoned mid-update.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl<M> Queue<M> {
    fn new(capacity: usize, overflow: Overflow) -> Self {
        Queue {
            state: CacheLine(Senders {
                items: Mutex::new(QueueState {
                    items: VecDeque::new(),
                    closed: false,
                }),
                len: AtomicUsize::new(0),
                overflow,
                scheduled: AtomicBool::new(false),
                parked: AtomicWaker::new(),
                interrupted: AtomicBool::new(false),
                retired: AtomicBool::new(false),
            }),
            taken: CacheLine(Mutex::new(VecDeque::new())),
            published: CacheLine(Published {
                taken_len: AtomicUsize::new(0),
                capacity: capacity.max(1),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState<M>> {
        lock(&self.state.items)
    }

    /// Publishes the senders' half's length; called under its lock after every change.
    fn counted(&self, state: &QueueState<M>) {
        self.state.len.store(state.items.len(), Ordering::Release);
    }

    /// Whether `state` (locked by the caller) and the host's half together are at the bound.
    fn full(&self, state: &QueueState<M>) -> bool {
        // Acquire: pairs with the host's stores; a stale value is only ever too large.
        state.items.len() + self.published.taken_len.load(Ordering::Acquire)
            >= self.published.capacity
    }

    fn push(&self, message: M) -> Result<(), Refused<M>> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refused::Closed(message));
        }
        if self.full(&state) {
            return Err(Refused::Full(message));
        }
        state.items.push_back(message);
        self.counted(&state);
        Ok(())
    }

    fn force_push(&self, message: M) -> Result<Option<M>, Refused<M>> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refused::Closed(message));
        }
        let evicted = if self.full(&state) {
            // The oldest is the host's, when it has any (lock order: state, then taken).
            let mut taken = lock(&self.taken);
            let oldest = taken.pop_front();
            self.published
                .taken_len
                .store(taken.len(), Ordering::Release);
            drop(taken);
            oldest.or_else(|| state.items.pop_front())
        } else {
            None
        };
        state.items.push_back(message);
        self.counted(&state);
        Ok(evicted)
    }

    /// Tells senders the host's half now holds `left`: at once on a small mailbox or an empty
    /// half, else every [`PUBLISH_EVERY`] pops.
    fn publish(&self, left: usize) {
        if left.is_multiple_of(PUBLISH_EVERY) || self.published.capacity < PUBLISH_EVERY * 16 {
            self.published.taken_len.store(left, Ordering::Release);
        }
    }

    /// The host's pop: from its own half, refilled by a swap when empty.
    fn pop(&self) -> Option<M> {
        // Acquire: pairs with the stores under the locks. A stale `taken_len` is only ever too
        // large, and only the host adds to `taken`: zero here means it is empty.
        if self.published.taken_len.load(Ordering::Acquire) != 0 {
            let mut taken = lock(&self.taken);
            if let Some(message) = taken.pop_front() {
                self.publish(taken.len());
                if taken.is_empty() {
                    Self::drained(&mut taken);
                }
                return Some(message);
            }
        }
        // Nothing from the senders: no lock taken. One pushing now wakes the host after.
        if self.state.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut state = self.lock();
        if state.items.is_empty() {
            return None;
        }
        let mut taken = lock(&self.taken);
        // Still empty (only the host adds to it; a sender's eviction only takes): the drained
        // buffer, already shrunk, becomes the senders' half.
        if taken.is_empty() {
            std::mem::swap(&mut state.items, &mut *taken);
            self.counted(&state);
        }
        let message = taken.pop_front();
        if taken.is_empty() {
            Self::drained(&mut taken);
        }
        // Published under `state` too: it grew, and a sender must not see the old length.
        self.published
            .taken_len
            .store(taken.len(), Ordering::Release);
        drop(state);
        message
    }

    /// The host's half was emptied: it starts again at its buffer's first slot (the next swap
    /// hands it to senders, whose pushes then land where the last ones did, in cache, rather
    /// than walking the buffer), and a large buffer gives its room back.
    fn drained(taken: &mut VecDeque<M>) {
        // std's `clear` puts the head back at the start (not promised by its documentation:
        // the unit test below would catch a toolchain where it no longer does).
        taken.clear();
        if taken.capacity() > RETAINED_CAPACITY {
            taken.shrink_to(RETAINED_CAPACITY);
        }
    }

    /// Closes the queue and takes what it still holds, oldest first.
    fn close(&self) -> VecDeque<M> {
        let mut state = self.lock();
        state.closed = true;
        let mut taken = lock(&self.taken);
        self.published.taken_len.store(0, Ordering::Release);
        let mut left = std::mem::take(&mut *taken);
        left.append(&mut state.items);
        state.items = VecDeque::new();
        self.counted(&state);
        left
    }

    fn reopen(&self) {
        self.lock().closed = false;
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    fn len(&self) -> usize {
        let state = self.lock();
        state.items.len() + lock(&self.taken).len()
    }

    /// Whether nothing is queued, without a lock: the host's look before and after it
    /// registers to wait (a push's `Release` store of the length comes before its wake's fence).
    /// Two loads, not one snapshot: right for the one host draining the slot (the only caller
    /// outside tests), whose own pops and swaps are the only things that fill `taken`.
    fn is_empty(&self) -> bool {
        self.published.taken_len.load(Ordering::Acquire) == 0
            && self.state.len.load(Ordering::Acquire) == 0
    }
}

pub(crate) struct Slot<M> {
    id: OnceLock<Arc<str>>,
    /// With the overflow policy and what the host's wait reads and writes (`scheduled`,
    /// `parked`, `interrupted`, `retired`) on the senders' line.
    queue: Queue<M>,
    current: RwLock<Option<ActorRef<Wake>>>,
    incarnations: AtomicU64,
    /// Receives the messages still queued when the mailbox closes for good.
    undelivered: OnceLock<UndeliveredHook<M>>,
    /// The span of the message being handled, set by workers that trace their messages, so a
    /// restart after a crash is recorded inside the trace of the message that caused it.
    trace_parent: std::sync::Mutex<Option<tracing::Span>>,
    /// The drain tasks of its incarnations still running.
    drains: Arc<Drains>,
    /// How to drop each living incarnation's context and state, by its actor's id.
    kept: Arc<Mutex<Vec<(ractor::ActorId, Discard)>>>,
}

/// Drops an incarnation's context and state (if its drain task does not hold them).
type Discard = Arc<dyn Fn() + Send + Sync>;

/// Keeps an incarnation's [`Discard`] listed in its slot until it drops.
pub(crate) struct Kept {
    kept: Arc<Mutex<Vec<(ractor::ActorId, Discard)>>>,
    discard: Discard,
}

impl Drop for Kept {
    fn drop(&mut self) {
        lock(&self.kept).retain(|(_, discard)| !Arc::ptr_eq(discard, &self.discard));
    }
}

/// The drain tasks of a slot's incarnations still running, by their actor's id (one at a time,
/// but for a killed one whose handler still blocks its thread; or two children built from one
/// `Start`).
#[derive(Default)]
pub(crate) struct Drains(Mutex<Vec<(ractor::ActorId, Arc<tokio::sync::Notify>)>>);

impl Drains {
    /// Returns once no drain task of the incarnation of `actor` runs: a killed incarnation's
    /// task ends at its next await, or, if its handler blocks its thread, when that returns.
    pub(crate) async fn drained(&self, actor: ractor::ActorId) {
        loop {
            let Some(done) = lock(&self.0)
                .iter()
                .find(|(id, _)| *id == actor)
                .map(|(_, done)| done.clone())
            else {
                return;
            };
            // Created before the check below: a guard dropped between them still wakes it.
            let ended = done.notified();
            let running = lock(&self.0)
                .iter()
                .any(|(_, entry)| Arc::ptr_eq(entry, &done));
            if running {
                ended.await;
            }
        }
    }
}

/// Held by an incarnation's drain task: its drop says the task, and the worker's state in it,
/// ended.
pub(crate) struct Draining {
    drains: Arc<Drains>,
    done: Arc<tokio::sync::Notify>,
}

impl Drop for Draining {
    fn drop(&mut self) {
        lock(&self.drains.0).retain(|(_, done)| !Arc::ptr_eq(done, &self.done));
        self.done.notify_waiters();
    }
}

impl<M> Slot<M> {
    pub(crate) fn new(capacity: usize, overflow: Overflow) -> Self {
        Slot {
            id: OnceLock::new(),
            queue: Queue::new(capacity, overflow),
            current: RwLock::new(None),
            incarnations: AtomicU64::new(0),
            undelivered: OnceLock::new(),
            trace_parent: std::sync::Mutex::new(None),
            drains: Arc::default(),
            kept: Arc::default(),
        }
    }

    /// Lists how to drop the context and state of the incarnation of `actor`, until the returned
    /// guard drops.
    pub(crate) fn keep(
        &self,
        actor: ractor::ActorId,
        discard: impl Fn() + Send + Sync + 'static,
    ) -> Kept {
        let discard: Discard = Arc::new(discard);
        lock(&self.kept).push((actor, discard.clone()));
        Kept {
            kept: self.kept.clone(),
            discard,
        }
    }

    /// Drops the context and state of the incarnation of `actor` where ractor keeps them: after a
    /// kill, ractor hands its actor's state to the supervisor in an event, which it may handle
    /// after the next incarnation started.
    pub(crate) fn discard(&self, actor: ractor::ActorId) {
        let discards: Vec<Discard> = lock(&self.kept)
            .iter()
            .filter(|(id, _)| *id == actor)
            .map(|(_, discard)| discard.clone())
            .collect();
        for discard in discards {
            discard();
        }
    }

    /// Its incarnations' drain tasks.
    pub(crate) fn drains(&self) -> &Arc<Drains> {
        &self.drains
    }

    /// Records that the incarnation of `actor` starts its drain task, until the returned guard
    /// drops.
    pub(crate) fn draining(&self, actor: ractor::ActorId) -> Draining {
        let done = Arc::new(tokio::sync::Notify::new());
        lock(&self.drains.0).push((actor, done.clone()));
        Draining {
            drains: self.drains.clone(),
            done,
        }
    }

    /// Names the slot after its child; the first name sticks (a spec reused under another id
    /// keeps its first).
    pub(crate) fn name(&self, id: &Arc<str>) {
        let _ = self.id.set(id.clone());
    }

    pub(crate) fn id(&self) -> &str {
        self.id.get().map_or("", |id| id)
    }

    /// Wakes the host waiting for work, unless it is awake already.
    ///
    /// Lost-wakeup freedom is a Dekker pattern: the sender does (push; fence; swap flag) and the
    /// host, waiting in [`Slot::idle`], does (register its waker; clear flag; fence; look at the
    /// queue). With both fences `SeqCst`, either the host sees the push, or the sender's swap sees
    /// the cleared flag, after the waker was registered, and wakes it.
    fn wake(&self) {
        fence(Ordering::SeqCst);
        if !self.queue.state.scheduled.swap(true, Ordering::SeqCst) {
            self.queue.state.parked.wake();
        }
    }

    /// Sends a `Wake` to the running incarnation, if any (one that has not started draining
    /// yet gets its queue looked at; one draining ignores it).
    fn wake_current(&self) {
        // A poisoned lock only means a panic elsewhere while it was held; the value is a plain
        // handle and still good.
        let current = self
            .current
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(actor) = current.as_ref() {
            // A dead incarnation refuses the wake; its successor wakes itself on start.
            let _ = actor.send_message(Wake);
        }
    }

    /// Resolves once the queue has work, or the incarnation is to stop (interrupted, or its
    /// handle retired the mailbox), with whether it had to wait (the task was suspended). The
    /// host's wait between messages.
    pub(crate) fn idle(&self) -> impl Future<Output = bool> + '_ {
        let mut waited = false;
        std::future::poll_fn(move |context| {
            let over = || self.is_interrupted() || self.is_retired() || !self.queue.is_empty();
            // Woken by a send: the flag it set stays set, so the sends behind it wake nobody.
            if over() {
                return std::task::Poll::Ready(waited);
            }
            self.queue.state.parked.register(context.waker());
            self.queue.state.scheduled.store(false, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if over() {
                std::task::Poll::Ready(waited)
            } else {
                waited = true;
                std::task::Poll::Pending
            }
        })
    }

    /// Asks the running incarnation to return to ractor's loop after its current batch (a
    /// stop is being queued for it), waking it if it waits for work.
    pub(crate) fn interrupt(&self) {
        self.queue.state.interrupted.store(true, Ordering::SeqCst);
        self.queue.state.parked.wake();
    }

    /// A new incarnation starts: an interrupt was meant for its predecessor. Called before its
    /// `start`, which may ask to stop.
    pub(crate) fn clear_interrupt(&self) {
        self.queue.state.interrupted.store(false, Ordering::SeqCst);
    }

    /// Whether the running incarnation is to return to ractor's loop.
    pub(crate) fn is_interrupted(&self) -> bool {
        self.queue.state.interrupted.load(Ordering::SeqCst)
    }

    pub(crate) fn pop(&self) -> Option<M> {
        self.queue.pop()
    }

    /// A new incarnation is running: route wakes to it and wake it once, since messages may have
    /// queued while no incarnation was running.
    pub(crate) fn attach(&self, actor: ActorRef<Wake>) -> u64 {
        let incarnation = self.incarnations.fetch_add(1, Ordering::Relaxed) + 1;
        *self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(actor.clone());
        self.queue.state.scheduled.store(true, Ordering::SeqCst);
        let _ = actor.send_message(Wake);
        incarnation
    }

    /// The incarnation with this actor id has ended.
    pub(crate) fn detach(&self, actor: ractor::ActorId) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if current
            .as_ref()
            .is_some_and(|running| running.get_id() == actor)
        {
            *current = None;
        }
    }

    /// Closes the mailbox for good: later sends fail with [`SendError::Closed`], and every message
    /// still queued goes to the undelivered hook with `why` (or is counted in a warning when the
    /// child has no hook), so none vanishes silently.
    pub(crate) fn close(&self, why: &MailboxClosed) {
        let left = self.queue.close();
        if left.is_empty() {
            return;
        }
        match self.undelivered.get() {
            Some(hook) => {
                for message in left {
                    hook(message, why);
                }
            }
            None => tracing::warn!(
                child.id = self.id(),
                undelivered = left.len(),
                reason = %why,
                "mailbox closed with messages still queued; they are dropped"
            ),
        }
    }

    /// Opens the mailbox again for a new incarnation, unless its handle closed it: that is
    /// for good.
    pub(crate) fn reopen(&self) {
        if !self.is_retired() {
            self.queue.reopen();
        }
    }

    /// Closes the mailbox for good on its handle's request, and wakes the running incarnation
    /// (if any) so it stops; one that starts later stops at once.
    fn retire(&self, reason: String) {
        self.queue.state.retired.store(true, Ordering::SeqCst);
        self.close(&MailboxClosed::ByHandle(reason));
        self.queue.state.parked.wake();
        self.wake_current();
    }

    /// As [`Slot::retire`], handing what is still queued to the caller instead of the
    /// undelivered hook.
    fn retire_taking(&self) -> VecDeque<M> {
        self.queue.state.retired.store(true, Ordering::SeqCst);
        let left = self.queue.close();
        self.queue.state.parked.wake();
        self.wake_current();
        left
    }

    /// Whether the handle closed the mailbox: the incarnation has nothing more to do.
    pub(crate) fn is_retired(&self) -> bool {
        self.queue.state.retired.load(Ordering::SeqCst)
    }

    pub(crate) fn incarnations(&self) -> u64 {
        self.incarnations.load(Ordering::Relaxed)
    }

    pub(crate) fn depth(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn set_trace_parent(&self, span: tracing::Span) {
        *self
            .trace_parent
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(span);
    }

    /// Takes the recorded span: a span held here stays open (unexported) until dropped.
    pub(crate) fn take_trace_parent(&self) -> Option<tracing::Span> {
        self.trace_parent
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
    }
}

/// A stable handle to a supervised worker, valid across its restarts.
///
/// A message sent after a restart reaches the new incarnation; messages queued before a crash
/// are delivered to the next incarnation, except the one whose handling crashed. The mailbox is
/// bounded; [`Overflow`] decides what a full one does.
pub struct ChildRef<M> {
    slot: Arc<Slot<M>>,
}

impl<M> Clone for ChildRef<M> {
    fn clone(&self) -> Self {
        ChildRef {
            slot: self.slot.clone(),
        }
    }
}

impl<M> std::fmt::Debug for ChildRef<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildRef")
            .field("id", &self.slot.id())
            .field("depth", &self.slot.depth())
            .field("incarnations", &self.slot.incarnations())
            .finish()
    }
}

impl<M: Send + 'static> ChildRef<M> {
    pub(crate) fn new(slot: Arc<Slot<M>>) -> Self {
        ChildRef { slot }
    }

    /// Queues a message for the child.
    ///
    /// # Errors
    /// [`SendError::Full`] when the mailbox is full under [`Overflow::Reject`];
    /// [`SendError::Closed`] when the child is gone for good. Both hand the message back.
    pub fn send(&self, message: M) -> Result<Sent<M>, SendError<M>> {
        let pushed = match self.slot.queue.state.overflow {
            Overflow::Reject => self.slot.queue.push(message).map(|()| Sent::Queued),
            Overflow::DropOldest => self
                .slot
                .queue
                .force_push(message)
                .map(|evicted| evicted.map_or(Sent::Queued, Sent::Evicted)),
        };
        let sent = pushed.map_err(|refused| match refused {
            Refused::Full(message) => SendError::Full(message),
            Refused::Closed(message) => SendError::Closed(message),
        })?;
        self.slot.wake();
        Ok(sent)
    }

    /// Sets what happens to the messages still queued when this child's mailbox closes for good
    /// (see [`MailboxClosed`] for when): each is handed to `hook` with the reason, so a runtime
    /// can dead-letter them. Without a hook they are dropped and counted in a warning. The first
    /// hook set stays.
    pub fn on_undelivered(&self, hook: impl Fn(M, &MailboxClosed) + Send + Sync + 'static) {
        let _ = self.slot.undelivered.set(Box::new(hook));
    }

    /// Closes the mailbox for good, as if the child were gone: later sends fail with
    /// [`SendError::Closed`] and the queued messages go to the undelivered hook with
    /// [`MailboxClosed::ByHandle`] and `reason`. The child's incarnation, running or starting,
    /// stops normally once it has finished the message it is handling (a `transient` or
    /// `temporary` child is then not restarted): nothing could reach it any more.
    pub fn close(&self, reason: impl Into<String>) {
        self.slot.retire(reason.into());
    }

    /// As [`ChildRef::close`], but the messages still queued are returned, oldest first,
    /// instead of going to the undelivered hook: for a runtime that sends them on to where the
    /// child now lives (a fleet handing an entity to another node). The caller owns them, and
    /// with them the promise that none vanishes.
    pub fn close_taking(&self) -> Vec<M> {
        self.slot.retire_taking().into()
    }

    /// Whether the mailbox is closed (sends fail with [`SendError::Closed`]).
    pub fn is_closed(&self) -> bool {
        self.slot.queue.is_closed()
    }

    /// Sends a request built around a reply channel and awaits the reply.
    ///
    /// # Errors
    /// [`Error::MailboxFull`] or [`Error::Closed`] when the request could not be queued, and
    /// [`Error::NoReply`] when the child dropped the reply channel (it crashed while handling
    /// the request, or ignored it).
    pub async fn call<R>(
        &self,
        request: impl FnOnce(tokio::sync::oneshot::Sender<R>) -> M,
    ) -> Result<R, Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let child = || self.id().to_owned();
        self.send(request(reply)).map_err(|error| match error {
            SendError::Full(_) => Error::MailboxFull { child: child() },
            SendError::Closed(_) => Error::Closed { child: child() },
        })?;
        answer.await.map_err(|_| Error::NoReply { child: child() })
    }

    /// Whether both handles address the same child.
    pub fn same_child(&self, other: &ChildRef<M>) -> bool {
        Arc::ptr_eq(&self.slot, &other.slot)
    }

    /// The child's id.
    pub fn id(&self) -> &str {
        self.slot.id()
    }

    /// Messages queued and not yet handled (the one being handled is not counted).
    pub fn depth(&self) -> usize {
        self.slot.depth()
    }

    /// The mailbox's capacity.
    pub fn capacity(&self) -> usize {
        self.slot.queue.published.capacity
    }

    /// How many incarnations have started so far (1 after the first start, +1 per restart).
    pub fn incarnations(&self) -> u64 {
        self.slot.incarnations()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use ractor::{Actor, ActorProcessingErr, ActorRef};

    use super::*;

    /// Counts the wakes it receives and does nothing else: the test drains the slot itself.
    struct Counter(Arc<AtomicUsize>);

    impl Actor for Counter {
        type Msg = Wake;
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _: ActorRef<Wake>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn handle(
            &self,
            _: ActorRef<Wake>,
            _: Wake,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    async fn wakes_seen(wakes: &AtomicUsize, at_least: usize) -> usize {
        // The counting actor runs on the same runtime: let it catch up.
        for _ in 0..1_000 {
            if wakes.load(Ordering::SeqCst) >= at_least {
                break;
            }
            tokio::task::yield_now().await;
        }
        wakes.load(Ordering::SeqCst)
    }

    /// A waker that counts its wakes.
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Wakes>, std::task::Waker) {
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        (wakes, waker)
    }

    /// Polls the host's wait once: whether it is over.
    fn idle_over(slot: &Slot<u32>, waker: &std::task::Waker) -> bool {
        let mut context = std::task::Context::from_waker(waker);
        std::pin::pin!(slot.idle()).poll(&mut context).is_ready()
    }

    #[test]
    fn the_hosts_wait_says_whether_it_waited() {
        use std::task::Poll;
        let slot = Arc::new(Slot::<u32>::new(64, Overflow::Reject));
        let handle = ChildRef::new(slot.clone());
        let (_, waker) = counting();
        let mut context = std::task::Context::from_waker(&waker);
        handle.send(1).unwrap();
        // Work already there: over at once, and it counts as no wait (the host does not reset
        // its count towards the yield every DRAIN_BATCH messages).
        assert_eq!(
            std::pin::pin!(slot.idle()).poll(&mut context),
            Poll::Ready(false)
        );
        assert_eq!(slot.pop(), Some(1));
        let mut wait = std::pin::pin!(slot.idle());
        assert_eq!(wait.as_mut().poll(&mut context), Poll::Pending);
        handle.send(2).unwrap();
        assert_eq!(wait.as_mut().poll(&mut context), Poll::Ready(true));
    }

    #[tokio::test]
    async fn attaching_an_incarnation_sends_it_its_one_wake() {
        let slot = Arc::new(Slot::<u32>::new(64, Overflow::Reject));
        let handle = ChildRef::new(slot.clone());
        let wakes = Arc::new(AtomicUsize::new(0));
        let (actor, _) = Actor::spawn(None, Counter(wakes.clone()), ())
            .await
            .unwrap();
        slot.attach(actor.clone());
        assert_eq!(wakes_seen(&wakes, 1).await, 1);
        // Sends wake the host's task, not the actor: it stays inside that one `Wake`.
        for message in 0..10 {
            handle.send(message).unwrap();
        }
        assert_eq!(wakes_seen(&wakes, 2).await, 1);
        actor.stop(None);
    }

    #[test]
    fn one_wake_per_idle_to_busy_transition_however_many_messages() {
        let slot = Arc::new(Slot::<u32>::new(64, Overflow::Reject));
        let handle = ChildRef::new(slot.clone());
        let (wakes, waker) = counting();
        assert!(!idle_over(&slot, &waker), "nothing queued: the host waits");
        for message in 0..10 {
            handle.send(message).unwrap();
        }
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "one wake for ten messages"
        );
        assert!(idle_over(&slot, &waker));
        let drained: Vec<u32> = std::iter::from_fn(|| slot.pop()).collect();
        assert_eq!(drained, (0..10).collect::<Vec<_>>(), "in order");
        // Idle again: the next message wakes it, once.
        assert!(!idle_over(&slot, &waker));
        handle.send(10).unwrap();
        handle.send(11).unwrap();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert!(idle_over(&slot, &waker));
    }

    #[test]
    fn a_stop_request_or_a_retired_mailbox_ends_the_hosts_wait() {
        let slot = Arc::new(Slot::<u32>::new(64, Overflow::Reject));
        let handle = ChildRef::new(slot.clone());
        let (wakes, waker) = counting();
        assert!(!idle_over(&slot, &waker));
        slot.interrupt();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(
            idle_over(&slot, &waker),
            "interrupted: it returns to ractor's loop"
        );
        // The next incarnation starts without its predecessor's interrupt.
        slot.clear_interrupt();
        assert!(!idle_over(&slot, &waker));
        handle.close("gone");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert!(idle_over(&slot, &waker), "retired: it stops");
    }

    #[test]
    fn close_taking_hands_back_both_halves_in_order_and_bypasses_the_hook() {
        let slot = Arc::new(Slot::<u32>::new(64, Overflow::Reject));
        let handle = ChildRef::new(slot.clone());
        let hooked = Arc::new(AtomicUsize::new(0));
        let counted = hooked.clone();
        handle.on_undelivered(move |_, _| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        for message in 0..5 {
            handle.send(message).unwrap();
        }
        // The host took the first batch and handled one; two more arrive behind it.
        assert_eq!(slot.pop(), Some(0));
        handle.send(5).unwrap();
        handle.send(6).unwrap();
        assert_eq!(handle.close_taking(), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(hooked.load(Ordering::SeqCst), 0, "the caller owns them");
        assert!(slot.is_retired());
        assert!(matches!(handle.send(7), Err(SendError::Closed(7))));
        assert_eq!(slot.pop(), None);
    }

    #[test]
    fn the_bound_holds_over_what_the_host_took_and_what_waits() {
        let queue = Queue::<u32>::new(4, Overflow::Reject);
        for message in 0..4 {
            assert!(queue.push(message).is_ok());
        }
        assert!(matches!(queue.push(4), Err(Refused::Full(4))));
        // The host takes the whole batch and handles one: three are its, one slot is free.
        assert_eq!(queue.pop(), Some(0));
        assert_eq!(queue.len(), 3, "what the host took still counts");
        assert!(queue.push(4).is_ok());
        assert!(
            matches!(queue.push(5), Err(Refused::Full(5))),
            "3 taken + 1 waiting is the bound"
        );
        let rest: Vec<u32> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(rest, vec![1, 2, 3, 4], "in order across the swap");
        assert!(queue.is_empty());
    }

    #[test]
    fn a_large_mailbox_gives_room_back_every_sixteen_pops() {
        let queue = Queue::<u32>::new(1_024, Overflow::Reject);
        for message in 0..1_024 {
            assert!(queue.push(message).is_ok());
        }
        // The swap publishes exactly what the host took: 1,023 after its first pop.
        assert_eq!(queue.pop(), Some(0));
        assert!(queue.push(1_024).is_ok());
        assert_eq!(queue.pop(), Some(1));
        assert!(
            matches!(queue.push(1_025), Err(Refused::Full(_))),
            "the next pop is not published yet"
        );
        for expected in 2..16 {
            assert_eq!(queue.pop(), Some(expected));
        }
        // 1,008 left in the host's half: published.
        for message in 0..15 {
            assert!(
                queue.push(message).is_ok(),
                "the freed slots are given back"
            );
        }
        assert!(matches!(queue.push(15), Err(Refused::Full(_))));
        assert_eq!(queue.len(), 1_024);
    }

    #[test]
    fn drop_oldest_evicts_the_oldest_even_when_the_host_has_taken_it() {
        let queue = Queue::<u32>::new(3, Overflow::Reject);
        for message in 0..3 {
            assert!(queue.push(message).is_ok());
        }
        assert_eq!(queue.pop(), Some(0));
        assert!(queue.push(3).is_ok());
        // Full: 1 and 2 are the host's, 3 waits. The oldest is 1.
        assert_eq!(queue.force_push(4).ok(), Some(Some(1)));
        assert_eq!(queue.len(), 3);
        let rest: Vec<u32> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(rest, vec![2, 3, 4]);
    }

    #[test]
    fn the_lock_free_look_agrees_with_the_queue_through_evictions_and_lazy_counts() {
        // Evictions empty the host's half without a pop: the next pop still finds the senders'.
        let queue = Queue::<u32>::new(2, Overflow::Reject);
        assert!(queue.is_empty());
        for message in 0..2 {
            assert!(queue.push(message).is_ok());
        }
        assert!(!queue.is_empty());
        assert_eq!(queue.pop(), Some(0));
        assert!(queue.push(2).is_ok());
        // 1 is the host's, 2 waits: the next two pushes evict 1, then 2.
        assert_eq!(queue.force_push(3).ok(), Some(Some(1)));
        assert_eq!(queue.force_push(4).ok(), Some(Some(2)));
        assert!(!queue.is_empty());
        let rest: Vec<u32> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(rest, vec![3, 4]);
        assert!(queue.is_empty());
        assert_eq!(queue.pop(), None);

        // A large mailbox publishes its host's half lazily: never zero while it holds any.
        let queue = Queue::<u32>::new(1_024, Overflow::Reject);
        for message in 0..40 {
            assert!(queue.push(message).is_ok());
        }
        for expected in 0..40 {
            assert!(!queue.is_empty(), "{} left", 40 - expected);
            assert_eq!(queue.pop(), Some(expected));
        }
        assert!(queue.is_empty());
        assert!(queue.push(40).is_ok());
        assert!(!queue.is_empty());
        assert_eq!(queue.pop(), Some(40));
        assert_eq!(queue.pop(), None);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_close_hands_back_both_halves_oldest_first() {
        let queue = Queue::<u32>::new(8, Overflow::Reject);
        for message in 0..4 {
            assert!(queue.push(message).is_ok());
        }
        assert_eq!(queue.pop(), Some(0));
        assert!(queue.push(4).is_ok());
        assert_eq!(Vec::from(queue.close()), vec![1, 2, 3, 4]);
        assert!(queue.is_empty());
        assert!(matches!(queue.push(5), Err(Refused::Closed(5))));
        queue.reopen();
        assert!(queue.push(5).is_ok(), "the bound starts afresh");
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn a_drained_queue_gives_its_memory_back() {
        let queue = Queue::<u64>::new(4_096, Overflow::Reject);
        for message in 0..1_000 {
            assert!(queue.push(message).is_ok());
        }
        assert_eq!(std::iter::from_fn(|| queue.pop()).count(), 1_000);
        let state = queue.lock().items.capacity();
        let taken = lock(&queue.taken).capacity();
        assert!(
            state <= RETAINED_CAPACITY && taken <= RETAINED_CAPACITY,
            "kept {state} + {taken} slots"
        );
    }

    #[test]
    fn one_message_at_a_time_reuses_the_first_slot_and_the_senders_line_holds_a_send() {
        // Each message pushed to an idle mailbox lands where the last one did (in cache), not
        // one slot further round the buffer.
        let queue = Queue::<[u8; 208]>::new(64, Overflow::Reject);
        let mut places = std::collections::BTreeSet::new();
        for round in 0..40u8 {
            assert!(queue.push([round; 208]).is_ok());
            places.insert(queue.lock().items.as_slices().0.as_ptr() as usize);
            assert!(queue.pop().is_some_and(|message| message[0] == round));
        }
        // The two halves swap buffers on every pop here: each is pushed to at its start.
        assert_eq!(places.len(), 2, "pushed at {places:x?}");
        // What a send reads and writes, besides `published`, fits the senders' line.
        assert!(std::mem::size_of::<Senders<[u8; 208]>>() <= std::mem::align_of::<CacheLine<()>>());
    }

    #[test]
    fn no_wake_is_lost_between_a_push_and_the_hosts_wait() {
        // The Dekker pair (push; fence; swap, then wake) against (register; clear; fence; look),
        // raced many times: either the host sees the message, or its registered waker is woken.
        for _ in 0..2_000 {
            let slot = Arc::new(Slot::<u32>::new(8, Overflow::Reject));
            slot.queue.state.scheduled.store(true, Ordering::SeqCst);
            let (wakes, waker) = counting();
            // Both sides start together, so the two orders and their interleavings all occur.
            let start = Arc::new(std::sync::Barrier::new(2));
            let pusher = {
                let (slot, start) = (slot.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    slot.queue.push(1).map_err(drop).unwrap();
                    slot.wake();
                })
            };
            start.wait();
            let seen = idle_over(&slot, &waker);
            pusher.join().unwrap();
            assert!(
                seen || wakes.0.load(Ordering::SeqCst) > 0,
                "the message was neither seen nor announced"
            );
        }
    }
}
