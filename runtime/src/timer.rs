//! Entity timers: `send_after` and `every`, owned by the incarnation that armed them.
//!
//! A timer is a tokio task that, when due, queues a small `Envelope::Tick` in its entity's own
//! mailbox; the incarnation turns the tick into the message (a one-shot's value, or a periodic
//! timer's factory called) and handles it like any other, except that it does not count as
//! activity for passivation. Rules:
//! - a timer belongs to the incarnation that armed it: a crash, a passivation or a stop drops the
//!   incarnation's `Timers`, which aborts every task, and a tick already queued from an earlier
//!   incarnation is recognised by its generation and ignored;
//! - a periodic timer armed with [`Timer::surviving_restart`] is re-armed (same id, same
//!   period) when the entity restarts after a crash; nothing is re-armed after a passivation;
//! - at most [`KindConfig::max_timers`](crate::KindConfig::max_timers) are armed per entity;
//! - a periodic timer keeps its period from the last tick when ticks come late, or its absolute
//!   schedule with [`Timer::catching_up`] (missed ticks delivered back to back);
//! - a tick that finds the mailbox full is skipped (a periodic one waits for its next period, a
//!   one-shot retries every 5 ms until it is queued or its entity is gone) and counted in
//!   [`Entities::timer_ticks_skipped`](crate::Entities::timer_ticks_skipped); a queued tick
//!   evicted by a `DropOldest` mailbox is counted the same way.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use garrison_supervisor::{ChildRef, SendError, Sent};

use crate::{Entity, dead_letter::DeadLetters, envelope::Envelope};

/// Identifies one armed timer of an entity; cancel it with
/// [`EntityContext::cancel_timer`](crate::EntityContext::cancel_timer). Unique within an
/// activation (a restart keeps the ids of the timers it re-arms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub u64);

/// Why a timer could not be armed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimerError {
    /// The entity has as many timers armed as its kind allows.
    #[error(
        "the {kind} entity already has {limit} timers armed (KindConfig::max_timers); cancel one \
         or raise the limit"
    )]
    TooMany {
        /// The entity kind.
        kind: &'static str,
        /// Its `max_timers`.
        limit: usize,
    },
    /// A periodic timer needs a period above zero.
    #[error("a periodic timer needs a period above zero")]
    ZeroPeriod,
}

type Make<M> = Arc<dyn Fn() -> M + Send + Sync>;

/// What a timer delivers when due.
enum Payload<M> {
    /// A one-shot's message, taken when it fires.
    Once(Option<M>),
    /// A periodic timer's factory, called on every tick.
    Every(Make<M>),
}

/// A timer to arm: [`Timer::after`] (one-shot) or [`Timer::every`] (periodic).
pub struct Timer<M> {
    delay: Duration,
    period: Option<Duration>,
    payload: Payload<M>,
    surviving_restart: bool,
    catching_up: bool,
}

impl<M> fmt::Debug for Timer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("delay", &self.delay)
            .field("period", &self.period)
            .field("surviving_restart", &self.surviving_restart)
            .field("catching_up", &self.catching_up)
            .finish()
    }
}

impl<M: Send + 'static> Timer<M> {
    /// Delivers `message` once, `delay` from now.
    pub fn after(delay: Duration, message: M) -> Self {
        Timer {
            delay,
            period: None,
            payload: Payload::Once(Some(message)),
            surviving_restart: false,
            catching_up: false,
        }
    }

    /// Delivers `make()` every `period`, the first one `period` from now. A tick that comes
    /// late (a busy runtime) is not made up for: the next one is a period after it (unless
    /// [`Timer::catching_up`]).
    pub fn every(period: Duration, make: impl Fn() -> M + Send + Sync + 'static) -> Self {
        Timer {
            delay: period,
            period: Some(period),
            payload: Payload::Every(Arc::new(make)),
            surviving_restart: false,
            catching_up: false,
        }
    }

    /// Keeps this periodic timer on its absolute schedule: ticks missed while the runtime was
    /// busy are delivered at once, back to back, so the count of ticks matches the time elapsed
    /// (a lockstep room's frames: none is ever skipped).
    pub fn catching_up(mut self) -> Self {
        self.catching_up = true;
        self
    }

    /// Re-arms this periodic timer, with the same id, when its entity restarts after a crash (a
    /// room's clock). A one-shot is never re-armed: whether it fired is not checkpointed.
    pub fn surviving_restart(mut self) -> Self {
        self.surviving_restart = true;
        self
    }
}

/// A periodic timer to re-arm after a crash.
struct Kept<M> {
    id: TimerId,
    period: Duration,
    make: Make<M>,
    catching_up: bool,
}

/// Shared by the incarnations of one activation: the id counter and the timers to re-arm.
pub(crate) struct TimerShared<E: Entity> {
    next_id: AtomicU64,
    kept: Mutex<Vec<Kept<E::Message>>>,
}

impl<E: Entity> Default for TimerShared<E> {
    fn default() -> Self {
        TimerShared {
            next_id: AtomicU64::new(1),
            kept: Mutex::new(Vec::new()),
        }
    }
}

/// Where a timer task reports: the kind's dead letters (for a message its tick evicted) and its
/// counts of skipped and late ticks and of timers armed.
#[derive(Clone)]
pub(crate) struct TimerSink {
    pub(crate) dead_letters: Arc<DeadLetters>,
    pub(crate) counters: Arc<TimerCounters>,
}

/// A kind's timer counters.
#[derive(Debug, Default)]
pub(crate) struct TimerCounters {
    /// Ticks dropped for a full mailbox (or evicted from a `DropOldest` one).
    pub(crate) skipped: AtomicU64,
    /// Ticks delivered more than one period after they were due.
    pub(crate) late: AtomicU64,
    /// Timers armed now, over all the kind's entities.
    pub(crate) armed: AtomicU64,
}

struct Armed<M> {
    id: TimerId,
    payload: Payload<M>,
    task: tokio::task::AbortHandle,
}

/// Each `Timers` gets its own generation, so a tick queued by an earlier incarnation's task is
/// told apart from this one's.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// The timers of one incarnation. Dropping it (the incarnation ended: crash, passivation, stop)
/// aborts every timer task.
pub(crate) struct Timers<E: Entity> {
    /// 0 until the first timer is armed (no tick can exist before).
    generation: u64,
    armed: Vec<Armed<E::Message>>,
    mailbox: ChildRef<Envelope<E>>,
    sink: TimerSink,
    limit: usize,
}

impl<E: Entity> Drop for Timers<E> {
    fn drop(&mut self) {
        for armed in &self.armed {
            armed.task.abort();
        }
        self.sink
            .counters
            .armed
            .fetch_sub(self.armed.len() as u64, Ordering::Relaxed);
    }
}

impl<E: Entity> Timers<E> {
    pub(crate) fn new(mailbox: ChildRef<Envelope<E>>, sink: TimerSink, limit: usize) -> Self {
        Timers {
            generation: 0,
            armed: Vec::new(),
            mailbox,
            sink,
            limit,
        }
    }

    /// This incarnation's generation, drawn when its first timer is armed.
    fn generation(&mut self) -> u64 {
        if self.generation == 0 {
            self.generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
        }
        self.generation
    }

    /// Re-arms the timers an earlier incarnation kept across a crash.
    pub(crate) fn rearm_kept(&mut self, shared: &TimerShared<E>, key: &E::Key) {
        let kept: Vec<(TimerId, Duration, Make<E::Message>, bool)> = shared
            .kept
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .map(|kept| (kept.id, kept.period, kept.make.clone(), kept.catching_up))
            .collect();
        for (id, period, make, catching_up) in kept {
            let task = self.spawn(key, id, period, Some(period), catching_up);
            self.sink.counters.armed.fetch_add(1, Ordering::Relaxed);
            self.armed.push(Armed {
                id,
                payload: Payload::Every(make),
                task,
            });
        }
    }

    pub(crate) fn arm(
        &mut self,
        shared: &TimerShared<E>,
        key: &E::Key,
        timer: Timer<E::Message>,
    ) -> Result<TimerId, TimerError> {
        if self.armed.len() >= self.limit {
            return Err(TimerError::TooMany {
                kind: E::KIND,
                limit: self.limit,
            });
        }
        if timer.period == Some(Duration::ZERO) {
            return Err(TimerError::ZeroPeriod);
        }
        let id = TimerId(shared.next_id.fetch_add(1, Ordering::Relaxed));
        if let (true, Payload::Every(make), Some(period)) =
            (timer.surviving_restart, &timer.payload, timer.period)
        {
            shared
                .kept
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .push(Kept {
                    id,
                    period,
                    make: make.clone(),
                    catching_up: timer.catching_up,
                });
        }
        let task = self.spawn(key, id, timer.delay, timer.period, timer.catching_up);
        self.sink.counters.armed.fetch_add(1, Ordering::Relaxed);
        self.armed.push(Armed {
            id,
            payload: timer.payload,
            task,
        });
        Ok(id)
    }

    /// Cancels timer `id`; returns whether it was armed. A tick it already queued is ignored.
    pub(crate) fn cancel(&mut self, shared: &TimerShared<E>, id: TimerId) -> bool {
        shared
            .kept
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .retain(|kept| kept.id != id);
        let Some(at) = self.armed.iter().position(|armed| armed.id == id) else {
            return false;
        };
        self.armed.swap_remove(at).task.abort();
        self.sink.counters.armed.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Timers armed now.
    pub(crate) fn len(&self) -> usize {
        self.armed.len()
    }

    /// The message a tick delivers, or none when the tick is stale (an earlier incarnation's, or
    /// of a timer cancelled since).
    pub(crate) fn fire(&mut self, generation: u64, id: TimerId) -> Option<E::Message> {
        if generation == 0 || generation != self.generation {
            return None;
        }
        let at = self.armed.iter().position(|armed| armed.id == id)?;
        match &mut self.armed[at].payload {
            Payload::Every(make) => Some(make()),
            Payload::Once(message) => {
                let message = message.take();
                self.armed.swap_remove(at);
                self.sink.counters.armed.fetch_sub(1, Ordering::Relaxed);
                message
            }
        }
    }

    fn spawn(
        &mut self,
        key: &E::Key,
        id: TimerId,
        delay: Duration,
        period: Option<Duration>,
        catching_up: bool,
    ) -> tokio::task::AbortHandle {
        let generation = self.generation();
        let mailbox = self.mailbox.clone();
        let sink = self.sink.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now() + delay;
            let every = period.unwrap_or(delay.max(RETRY));
            let mut ticks = tokio::time::interval_at(start, every);
            ticks.set_missed_tick_behavior(if catching_up {
                tokio::time::MissedTickBehavior::Burst
            } else {
                tokio::time::MissedTickBehavior::Delay
            });
            loop {
                let due = ticks.tick().await;
                if tokio::time::Instant::now().saturating_duration_since(due) > every {
                    sink.counters.late.fetch_add(1, Ordering::Relaxed);
                }
                match mailbox.send(Envelope::Tick {
                    generation,
                    id,
                    due,
                }) {
                    Ok(sent) => {
                        if let Sent::Evicted(envelope) = sent {
                            let (letters, skipped) = (&sink.dead_letters, &sink.counters.skipped);
                            crate::envelope::evicted(envelope, &mailbox, &key, letters, skipped);
                        }
                        if period.is_none() {
                            return;
                        }
                    }
                    Err(SendError::Full(_)) => {
                        sink.counters.skipped.fetch_add(1, Ordering::Relaxed);
                        if period.is_none() {
                            // A one-shot is owed: try again shortly.
                            ticks = tokio::time::interval_at(
                                tokio::time::Instant::now() + RETRY,
                                RETRY,
                            );
                        }
                    }
                    // The incarnation is gone (its drop aborts this task too).
                    Err(SendError::Closed(_)) => return,
                }
            }
        })
        .abort_handle()
    }
}

/// How soon a one-shot tick that found the mailbox full tries again.
const RETRY: Duration = Duration::from_millis(5);
