//! Adaptive overload protection: a limit that follows what the server measures directly, and
//! priority partitions that decide what is shed first.
//!
//! An [`AdaptiveLimit`] bounds the work admitted (for a game server: players in play) and
//! adapts the bound every `window` to a latency signal from the kinds it
//! [`watches`](AdaptiveLimit::watch) (rooms): how long their messages waited in mailboxes and
//! how late their ticks ran, raised to twice the target when a tick ran a whole period late. It
//! is the gradient rule of Netflix's concurrency-limits (Gradient2) with the latency target
//! fixed by the game instead of learned: a 60 Hz room has one tick for everything, whatever
//! the latency was yesterday (the battle gives its rooms' queues and clocks a quarter of it).
//!
//! - Signal above the target: the limit drops to `in use x target / signal` (at least half of
//!   what is in use, at least `min_limit`), so no new work is admitted until the signal
//!   recovers; work already admitted is never cut.
//! - Signal within the target: the limit grows by its square root (Gradient2's queue
//!   allowance), but only while at least half of it is in use, so an idle server does not build
//!   up a limit a burst of joins would then overrun.
//!
//! A request admitted counts as in use until `in_use` has grown by as much (for at most 10
//! windows; in use is then the larger of what `in_use` says and what it said at the last window
//! plus what was admitted since): on a loaded server a burst of joins arrives faster than it is
//! seated, and would otherwise all pass one window's check.
//!
//! The signal is the worst of two series per watched kind, each a 99th percentile over the
//! window: the mailbox wait of its messages, and the lateness of its timer ticks (from due to
//! handled: a room's clock running behind).
//!
//! Priorities: [`Priority::Critical`] (a running match's inputs) is always admitted: it is the
//! share the protection exists for. [`Priority::Normal`] is admitted below the limit.
//! [`Priority::Sheddable`] (joins, matchmaking, chat) is admitted below the limit and only while
//! the signal is within the target, so it is the first shed. A shed request gets
//! [`Refusal::Overloaded`] with a retry-after (the client is told `Refused` code 105 with
//! `retry_after_ms`); every shed is counted by priority.
//!
//! Two ways to count what is in use:
//! - **Reported** ([`AdaptiveLimit::new`]): the game says how much is in use (the battle:
//!   players seated in rooms) and [`admit`](AdaptiveLimit::admit) only decides.
//! - **Permits** ([`AdaptiveLimit::permits`]): a strict concurrency limit, each admitted request
//!   holds a [`Permit`] from [`acquire`](AdaptiveLimit::acquire) until it is dropped.
//!
//! Where Garrison applies one:
//! - **Per entity kind**: `KindConfig::overload` gives a kind a permits limit over the messages
//!   in its mailboxes and handlers, named after the kind and driven by its own latency. Each
//!   message's [`priority`](crate::EntityMessage::priority) (`critical = [..]` and
//!   `sheddable = [..]` in `entity_messages!`) decides its partition; a refused send is
//!   `Refused::Overloaded` to the sender. Session events and timers are never shed.
//! - **Per gateway**: `GatewayBuilder::overload` limits sessions; a new session's `Hello` is
//!   `Sheddable`, a resume `Critical`. A refused handshake gets `Refused` code 105 with the
//!   retry-after, then `Close` code 33 (`overloaded`). The limit watches every kind the gateway
//!   requires.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::{
    Entities, Entity, Refusal,
    stats::{HistogramSnapshot, LATENCY_BUCKETS},
};

/// Windows after which requests admitted and never seen in use stop counting.
const PENDING_WINDOWS: u64 = 10;

/// The retry-after told to the `nth` request shed: `retry_after` plus up to half of it, spread
/// evenly over consecutive refusals (the golden-ratio sequence). Clients shed in one burst
/// that all came back after the same delay would arrive as the same burst again, every time:
/// in the battle at 3x load, 1,200 joins a second in lockstep, each burst a late tick for
/// every running room.
pub fn spread_retry(retry_after: Duration, nth: u64) -> Duration {
    const GOLDEN: f64 = 0.618_033_988_749_895;
    // `nth` as f64 loses precision past 2^53 refusals; the fraction stays in [0, 1).
    let fraction = (nth as f64 * GOLDEN).fract();
    // Saturating: a configured retry-after near `Duration::MAX` must not panic on a shed.
    retry_after.saturating_add(retry_after.mul_f64(fraction / 2.0))
}

/// How much a request matters when the server is overloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    /// Never shed by the limit (a running match's inputs).
    Critical,
    /// Shed at the limit.
    Normal,
    /// Shed at the limit, and whenever the signal is over the target (joins, matchmaking,
    /// chat): shed first.
    Sheddable,
}

impl Priority {
    /// Every priority, in order.
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Normal, Priority::Sheddable];

    /// A short label, used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Sheddable => "sheddable",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// An [`AdaptiveLimit`]'s settings.
#[derive(Debug, Clone)]
pub struct OverloadConfig {
    /// The latency the watched kinds must stay within (default one 60 Hz tick, 16.7 ms).
    pub target: Duration,
    /// How often the limit is recomputed (default 100 ms).
    pub window: Duration,
    /// The limit at start (default 256).
    pub initial_limit: usize,
    /// The limit never drops below this (default 8).
    pub min_limit: usize,
    /// Nor rises above this (default 1,000,000).
    pub max_limit: usize,
    /// What a shed client is told to wait before retrying (default 1 s), spread over up to
    /// half as much again (see [`spread_retry`]) so shed clients do not all come back at once.
    pub retry_after: Duration,
    /// Windows with fewer samples than this leave the limit as it is (default 20).
    pub min_samples: u64,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        OverloadConfig {
            target: Duration::from_micros(16_667),
            window: Duration::from_millis(100),
            initial_limit: 256,
            min_limit: 8,
            max_limit: 1_000_000,
            retry_after: Duration::from_secs(1),
            min_samples: 20,
        }
    }
}

/// One watched kind: its stats and what was read of them last window.
struct Watched {
    read: Box<dyn Fn() -> Option<(HistogramSnapshot, u64)> + Send + Sync>,
    last: Option<(HistogramSnapshot, u64)>,
}

/// What an [`AdaptiveLimit`] counts as in use.
enum InUse {
    /// What a closure reports (players in play, sessions): seen late, so what is admitted
    /// counts as pending until it shows.
    Reported(Box<dyn Fn() -> usize + Send + Sync>),
    /// The [`Permit`]s held now ([`AdaptiveLimit::permits`]): exact at every admission.
    Permits(AtomicUsize),
}

struct Shared {
    config: OverloadConfig,
    limit: AtomicUsize,
    in_use: InUse,
    /// The signal is over the target now.
    over: AtomicBool,
    /// The last window's signal, in nanoseconds.
    signal_nanos: AtomicU64,
    admitted: [AtomicU64; 3],
    shed: [AtomicU64; 3],
    /// Admitted and not yet seen in `in_use` (a burst of joins arrives faster than it is
    /// seated, the more so on a loaded server): counted as in use until `in_use` grows by as
    /// much, for at most [`PENDING_WINDOWS`] windows.
    pending: AtomicUsize,
    /// `in_use` at the last window.
    last_in_use: AtomicUsize,
    windows: AtomicU64,
    /// Windows whose signal was over the target.
    over_windows: AtomicU64,
    watched: Signal,
}

/// The latency the watched kinds showed over the last window.
#[derive(Default)]
struct Signal {
    watched: Mutex<Vec<Watched>>,
}

impl Signal {
    fn watch<E: Entity>(&self, kind: &Entities<E>) {
        kind.stats().time();
        let weak = kind.downgrade();
        let waits = weak.clone();
        self.push(Box::new(move || {
            let kind = waits.upgrade()?;
            Some((
                kind.stats().mailbox_wait.snapshot(),
                kind.timer_ticks_late(),
            ))
        }));
        // Tick lateness as a second series (the late-tick count is read with the first).
        self.push(Box::new(move || {
            let kind = weak.upgrade()?;
            Some((kind.stats().tick_lateness.snapshot(), 0))
        }));
    }

    fn push(&self, read: Box<dyn Fn() -> Option<(HistogramSnapshot, u64)> + Send + Sync>) {
        self.watched
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(Watched { read, last: None });
    }

    /// The mailbox wait P99 since the last reading (the worst kind's), the samples it rests
    /// on, and whether any watched kind ran a tick late meanwhile.
    fn read(&self) -> (Duration, u64, bool) {
        let (mut signal, mut samples, mut late) = (Duration::ZERO, 0u64, false);
        for watched in self
            .watched
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter_mut()
        {
            let Some(now) = (watched.read)() else {
                continue;
            };
            if let Some((before, late_before)) = &watched.last {
                let (p99, count) = window_p99(before, &now.0);
                samples += count;
                signal = signal.max(p99);
                late |= now.1 > *late_before;
            }
            watched.last = Some(now);
        }
        (signal, samples, late)
    }
}

/// An adaptive limit with priority partitions (see the module's docs).
#[derive(Clone)]
pub struct AdaptiveLimit {
    shared: Arc<Shared>,
    name: &'static str,
}

impl std::fmt::Debug for AdaptiveLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("name", &self.name)
            .field("limit", &self.limit())
            .finish_non_exhaustive()
    }
}

/// What an [`AdaptiveLimit`] has done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverloadStats {
    /// The limit now.
    pub limit: usize,
    /// What is in use now.
    pub in_use: usize,
    /// The last window's signal.
    pub signal: Duration,
    /// Whether the signal is over the target now.
    pub over_target: bool,
    /// Admitted requests, per [`Priority::ALL`] entry.
    pub admitted: [u64; 3],
    /// Shed requests, per [`Priority::ALL`] entry.
    pub shed: [u64; 3],
    /// Windows read so far (the first only takes the watched kinds' starting point).
    pub windows: u64,
    /// Of those, the windows whose signal was over the target.
    pub over_windows: u64,
}

/// A place under an [`AdaptiveLimit::permits`] limit, given back when dropped (a message held
/// from its admission to the end of its handling). From a limit over what a closure reports, a
/// permit holds nothing.
#[must_use = "the place is given back when the permit drops"]
pub struct Permit {
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("holds", &self.shared.is_some())
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared
            && let InUse::Permits(held) = &shared.in_use
        {
            held.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl AdaptiveLimit {
    /// A limit named `name` (metrics label `limiter`) over what `in_use` counts (players in
    /// play, say). Call [`AdaptiveLimit::watch`] for the kinds whose latency it follows and
    /// [`AdaptiveLimit::start`] on the runtime that should recompute it.
    pub fn new(
        name: &'static str,
        config: OverloadConfig,
        in_use: impl Fn() -> usize + Send + Sync + 'static,
    ) -> Self {
        Self::with(name, config, InUse::Reported(Box::new(in_use)))
    }

    /// A limit named `name` over the [`Permit`]s it has handed out and not had back
    /// ([`AdaptiveLimit::acquire`]): a concurrency limit in the strict sense, such as a kind's
    /// messages accepted and not yet handled ([`KindConfig::overload`](crate::KindConfig)).
    pub fn permits(name: &'static str, config: OverloadConfig) -> Self {
        Self::with(name, config, InUse::Permits(AtomicUsize::new(0)))
    }

    fn with(name: &'static str, config: OverloadConfig, in_use: InUse) -> Self {
        let limit = config
            .initial_limit
            .clamp(config.min_limit, config.max_limit);
        AdaptiveLimit {
            name,
            shared: Arc::new(Shared {
                config,
                limit: AtomicUsize::new(limit),
                in_use,
                over: AtomicBool::new(false),
                signal_nanos: AtomicU64::new(0),
                admitted: Default::default(),
                shed: Default::default(),
                pending: AtomicUsize::new(0),
                last_in_use: AtomicUsize::new(0),
                windows: AtomicU64::new(0),
                over_windows: AtomicU64::new(0),
                watched: Signal::default(),
            }),
        }
    }

    /// Follows kind `E`'s mailbox wait and late ticks (and starts timing its mailboxes).
    pub fn watch<E: Entity>(&self, kind: &Entities<E>) -> &Self {
        self.shared.watched.watch(kind);
        self
    }

    /// Recomputes the limit every window on the current tokio runtime, until every clone of
    /// this limit is dropped.
    ///
    /// # Panics
    /// Outside a tokio runtime (see [`AdaptiveLimit::start_on`]).
    pub fn start(&self) {
        self.start_on(&tokio::runtime::Handle::current());
    }

    /// As [`AdaptiveLimit::start`], on `runtime`.
    pub fn start_on(&self, runtime: &tokio::runtime::Handle) {
        every_window(
            runtime,
            &self.shared,
            self.shared.config.window,
            Shared::update,
        );
    }

    /// Admits one request of `priority`, or refuses it as [`Refusal::Overloaded`] (`what` names
    /// what is shed, for the client's message), counting either. On a
    /// [`permits`](AdaptiveLimit::permits) limit the request takes no place (use
    /// [`AdaptiveLimit::acquire`] for one): this only asks whether it would be admitted.
    ///
    /// # Errors
    /// [`Refusal::Overloaded`] with the configured retry-after.
    pub fn admit(&self, priority: Priority, what: &'static str) -> Result<(), Refusal> {
        self.acquire(priority, what).map(drop)
    }

    /// Admits one request of `priority` as [`AdaptiveLimit::admit`] does, and holds its place
    /// until the returned permit drops (on a [`permits`](AdaptiveLimit::permits) limit; on one
    /// over what a closure reports, the request counts as pending until the closure sees it).
    ///
    /// # Errors
    /// [`Refusal::Overloaded`] with the configured retry-after.
    pub fn acquire(&self, priority: Priority, what: &'static str) -> Result<Permit, Refusal> {
        let shared = &self.shared;
        let limit = shared.limit.load(Ordering::Relaxed);
        // None: admitted whatever the limit; Some(false): shed; Some(true): below the limit.
        let bounded = match priority {
            Priority::Critical => None,
            Priority::Sheddable if shared.over.load(Ordering::Relaxed) => Some(false),
            Priority::Normal | Priority::Sheddable => Some(true),
        };
        // Checked and counted in one step, so racing threads cannot pass the limit together.
        let admitted = match (&shared.in_use, bounded) {
            (InUse::Permits(held), None) => {
                held.fetch_add(1, Ordering::Relaxed);
                true
            }
            (InUse::Reported(_), None) => true,
            (_, Some(false)) => false,
            (InUse::Permits(held), Some(true)) => held
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                    (held < limit).then_some(held + 1)
                })
                .is_ok(),
            (InUse::Reported(in_use), Some(true)) => {
                // What is in use: what `in_use` sees, or what it saw at the last window plus
                // what was admitted since, whichever is more (a request admitted and already
                // seen in use is counted once).
                let (in_use, seen) = (in_use(), shared.last_in_use.load(Ordering::Relaxed));
                shared
                    .pending
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |pending| {
                        (in_use.max(seen + pending) < limit).then_some(pending + 1)
                    })
                    .is_ok()
            }
        };
        let counters = if admitted {
            &shared.admitted
        } else {
            &shared.shed
        };
        // Relaxed: statistics counters, and a place count that orders nothing else.
        let nth = counters[priority.index()].fetch_add(1, Ordering::Relaxed);
        if !admitted {
            return Err(Refusal::Overloaded {
                what,
                retry_after: spread_retry(shared.config.retry_after, nth),
            });
        }
        Ok(Permit {
            shared: matches!(shared.in_use, InUse::Permits(_)).then(|| shared.clone()),
        })
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Ordering::Relaxed)
    }

    /// The limit's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// What it has done.
    pub fn stats(&self) -> OverloadStats {
        let shared = &self.shared;
        let load =
            |counters: &[AtomicU64; 3]| counters.each_ref().map(|c| c.load(Ordering::Relaxed));
        OverloadStats {
            limit: self.limit(),
            in_use: shared.in_use(),
            signal: Duration::from_nanos(shared.signal_nanos.load(Ordering::Relaxed)),
            over_target: shared.over.load(Ordering::Relaxed),
            admitted: load(&shared.admitted),
            shed: load(&shared.shed),
            windows: shared.windows.load(Ordering::Relaxed),
            over_windows: shared.over_windows.load(Ordering::Relaxed),
        }
    }

    /// One window's update, now (the task [`AdaptiveLimit::start`] spawns calls it; tests call
    /// it directly).
    pub fn update(&self) {
        self.shared.update();
    }
}

impl Shared {
    fn in_use(&self) -> usize {
        match &self.in_use {
            InUse::Reported(in_use) => in_use(),
            InUse::Permits(held) => held.load(Ordering::Relaxed),
        }
    }

    /// Reads the watched kinds' last window and moves the limit.
    fn update(&self) {
        let target = self.config.target;
        let in_use = self.in_use();
        let grown = in_use.saturating_sub(self.last_in_use.swap(in_use, Ordering::Relaxed));
        if (self.windows.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(PENDING_WINDOWS) {
            self.pending.store(0, Ordering::Relaxed);
        } else {
            let _ = self
                .pending
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |pending| {
                    Some(pending.saturating_sub(grown))
                });
        }
        let (mut signal, mut samples, late) = self.watched.read();
        if late {
            // A tick overrun is over budget by definition, however short the mailbox waits.
            signal = signal.max(target * 2);
            samples = samples.max(self.config.min_samples);
        }
        self.signal_nanos.store(
            u64::try_from(signal.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if samples < self.config.min_samples {
            // Too little traffic to judge: the limit stays, the signal is not over.
            self.over.store(false, Ordering::Relaxed);
            return;
        }
        let limit = self.limit.load(Ordering::Relaxed);
        let over = signal > target;
        self.over.store(over, Ordering::Relaxed);
        if over {
            self.over_windows.fetch_add(1, Ordering::Relaxed);
        }
        let next = if over {
            let gradient = (target.as_secs_f64() / signal.as_secs_f64()).clamp(0.5, 1.0);
            ((in_use as f64 * gradient) as usize).min(limit)
        } else if in_use * 2 >= limit {
            limit + (limit as f64).sqrt().ceil() as usize
        } else {
            limit
        };
        self.limit.store(
            next.clamp(self.config.min_limit, self.config.max_limit),
            Ordering::Relaxed,
        );
    }
}

/// The source's fixed breaker, for comparison: every window it scores the request rate and the
/// latency against fixed baselines, `score = 0.6 x qps / (1.5 x base_qps) + 0.4 x min(p99 /
/// base_latency, 3)`, and while the score is above `open_above` (1.8) it refuses every request,
/// whatever its priority.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// The request rate the score is relative to (the load the server was sized for).
    pub base_qps: f64,
    /// The latency the score is relative to.
    pub base_latency: Duration,
    /// The score above which it opens (1.8).
    pub open_above: f64,
    /// How often it scores (100 ms).
    pub window: Duration,
    /// What a refused client is told to wait (1 s).
    pub retry_after: Duration,
}

impl BreakerConfig {
    /// The source's weights and threshold around these baselines.
    pub fn new(base_qps: f64, base_latency: Duration) -> Self {
        BreakerConfig {
            base_qps,
            base_latency,
            open_above: 1.8,
            window: Duration::from_millis(100),
            retry_after: Duration::from_secs(1),
        }
    }
}

struct BreakerShared {
    config: BreakerConfig,
    requests: Box<dyn Fn() -> u64 + Send + Sync>,
    last_requests: AtomicU64,
    open: AtomicBool,
    /// The last score, x 1000.
    score_milli: AtomicU64,
    shed: AtomicU64,
    signal: Signal,
}

impl BreakerShared {
    /// Scores the last window and opens or closes.
    fn score(&self) {
        let requests = (self.requests)();
        let before = self.last_requests.swap(requests, Ordering::Relaxed);
        let qps = requests.saturating_sub(before) as f64 / self.config.window.as_secs_f64();
        let (p99, _, _) = self.signal.read();
        let score = 0.6 * qps / (1.5 * self.config.base_qps)
            + 0.4 * (p99.as_secs_f64() / self.config.base_latency.as_secs_f64()).min(3.0);
        self.score_milli
            .store((score * 1000.0) as u64, Ordering::Relaxed);
        self.open
            .store(score > self.config.open_above, Ordering::Relaxed);
    }
}

/// Runs `work` on `shared` every `window` on the current tokio runtime, until `shared` is
/// dropped (the task holds it weakly).
fn every_window<T: Send + Sync + 'static>(
    runtime: &tokio::runtime::Handle,
    shared: &Arc<T>,
    window: Duration,
    work: fn(&T),
) {
    let weak = Arc::downgrade(shared);
    runtime.spawn(async move {
        let mut ticker = tokio::time::interval(window);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(shared) = weak.upgrade() else {
                return;
            };
            work(&shared);
        }
    });
}

/// The source's fixed QPS + P99 breaker (see [`BreakerConfig`]).
#[derive(Clone)]
pub struct FixedBreaker {
    shared: Arc<BreakerShared>,
}

impl std::fmt::Debug for FixedBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedBreaker")
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

impl FixedBreaker {
    /// A breaker scoring the rate of `requests` (a running count) and the watched kinds'
    /// latency.
    pub fn new(config: BreakerConfig, requests: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        let first = requests();
        FixedBreaker {
            shared: Arc::new(BreakerShared {
                config,
                requests: Box::new(requests),
                last_requests: AtomicU64::new(first),
                open: AtomicBool::new(false),
                score_milli: AtomicU64::new(0),
                shed: AtomicU64::new(0),
                signal: Signal::default(),
            }),
        }
    }

    /// Scores kind `E`'s mailbox wait (and starts timing its mailboxes).
    pub fn watch<E: Entity>(&self, kind: &Entities<E>) -> &Self {
        self.shared.signal.watch(kind);
        self
    }

    /// Scores every window on the current tokio runtime, until every clone is dropped.
    pub fn start(&self) {
        every_window(
            &tokio::runtime::Handle::current(),
            &self.shared,
            self.shared.config.window,
            BreakerShared::score,
        );
    }

    /// Admits a request unless the breaker is open.
    ///
    /// # Errors
    /// [`Refusal::Overloaded`] while it is open.
    pub fn admit(&self, what: &'static str) -> Result<(), Refusal> {
        if self.is_open() {
            self.shared.shed.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Overloaded {
                what,
                retry_after: self.shared.config.retry_after,
            });
        }
        Ok(())
    }

    /// Whether it is open now.
    pub fn is_open(&self) -> bool {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Requests it refused so far.
    pub fn shed(&self) -> u64 {
        self.shared.shed.load(Ordering::Relaxed)
    }

    /// The last score.
    pub fn score(&self) -> f64 {
        self.shared.score_milli.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

/// The 99th percentile of what a histogram gained between two readings (the upper bound of
/// the bucket it falls in; twice the last finite bound when above all), and how many it gained.
fn window_p99(before: &HistogramSnapshot, now: &HistogramSnapshot) -> (Duration, u64) {
    let count = now.count.saturating_sub(before.count);
    if count == 0 {
        return (Duration::ZERO, 0);
    }
    let rank = (count as f64 * 0.99).ceil() as u64;
    for ((bound, cumulative), (_, earlier)) in now.buckets.iter().zip(&before.buckets) {
        if cumulative.saturating_sub(*earlier) >= rank {
            let bound = if bound.is_finite() {
                *bound
            } else {
                LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1] * 2.0
            };
            return (Duration::from_secs_f64(bound), count);
        }
    }
    (Duration::ZERO, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Histogram;

    #[test]
    fn the_window_p99_is_read_from_the_bucket_deltas() {
        let histogram = Histogram::default();
        for _ in 0..1000 {
            histogram.observe(Duration::from_micros(30));
        }
        let before = histogram.snapshot();
        for _ in 0..98 {
            histogram.observe(Duration::from_micros(300));
        }
        for _ in 0..2 {
            histogram.observe(Duration::from_millis(40));
        }
        let (p99, count) = window_p99(&before, &histogram.snapshot());
        assert_eq!(count, 100);
        assert_eq!(
            p99,
            Duration::from_secs_f64(0.05),
            "the 99th is in the 50 ms bucket"
        );
    }

    #[test]
    fn the_limit_drops_to_what_is_in_use_over_target_and_grows_within_it() {
        let waits = Arc::new(Histogram::default());
        let in_use = Arc::new(AtomicUsize::new(100));
        let counted = in_use.clone();
        let limit = AdaptiveLimit::new(
            "test",
            OverloadConfig {
                initial_limit: 120,
                ..OverloadConfig::default()
            },
            move || counted.load(Ordering::Relaxed),
        );
        let read = waits.clone();
        limit
            .shared
            .watched
            .push(Box::new(move || Some((read.snapshot(), 0))));
        limit.update(); // the first reading
        for _ in 0..100 {
            waits.observe(Duration::from_millis(40));
        }
        limit.update();
        // 40 ms waits are in the 50 ms bucket: gradient 16.7 / 50, held at 0.5 of in use.
        assert_eq!(limit.limit(), 50);
        assert!(limit.stats().over_target);
        assert!(limit.admit(Priority::Sheddable, "joins").is_err());
        for _ in 0..100 {
            waits.observe(Duration::from_micros(200));
        }
        in_use.store(50, Ordering::Relaxed);
        limit.update();
        assert_eq!(
            limit.limit(),
            58,
            "grows by its square root while half is in use"
        );
        assert!(!limit.stats().over_target);
        limit.update();
        assert_eq!(limit.limit(), 58, "a quiet window leaves it");
        let stats = limit.stats();
        assert_eq!(
            (stats.windows, stats.over_windows),
            (4, 1),
            "four windows read, one over the target"
        );
    }

    #[test]
    fn sheddable_goes_first_and_critical_never() {
        let in_use = Arc::new(AtomicUsize::new(0));
        let counted = in_use.clone();
        let limit = AdaptiveLimit::new(
            "test",
            OverloadConfig {
                initial_limit: 10,
                ..OverloadConfig::default()
            },
            move || counted.load(Ordering::Relaxed),
        );
        in_use.store(8, Ordering::Relaxed);
        assert!(limit.admit(Priority::Sheddable, "joins").is_ok());
        limit.shared.over.store(true, Ordering::Relaxed);
        let shed = limit.admit(Priority::Sheddable, "joins").unwrap_err();
        assert_eq!(
            shed.retry_after(),
            Some(Duration::from_secs(1)),
            "the first shed"
        );
        let again = limit.admit(Priority::Sheddable, "joins").unwrap_err();
        let spread = again.retry_after().unwrap();
        assert!(
            spread > Duration::from_secs(1) && spread < Duration::from_millis(1_500),
            "the next is spread: {spread:?}"
        );
        assert!(
            limit.admit(Priority::Normal, "chat").is_ok(),
            "below the limit"
        );
        in_use.store(10, Ordering::Relaxed);
        assert!(
            limit.admit(Priority::Normal, "chat").is_err(),
            "at the limit"
        );
        assert!(limit.admit(Priority::Critical, "inputs").is_ok());
        let stats = limit.stats();
        assert_eq!(stats.admitted, [1, 1, 1]);
        assert_eq!(stats.shed, [0, 1, 2]);
    }

    #[test]
    fn a_burst_is_admitted_up_to_the_limit_within_a_window() {
        let limit = AdaptiveLimit::new(
            "test",
            OverloadConfig {
                initial_limit: 10,
                ..OverloadConfig::default()
            },
            || 0,
        );
        let admitted = (0..25)
            .filter(|_| limit.admit(Priority::Sheddable, "joins").is_ok())
            .count();
        assert_eq!(
            admitted, 10,
            "in use cannot see them yet; the limit still holds"
        );
        limit.update();
        assert!(
            limit.admit(Priority::Sheddable, "joins").is_err(),
            "still pending: in use has not grown"
        );
        for _ in 1..PENDING_WINDOWS {
            limit.update();
        }
        assert!(
            limit.admit(Priority::Sheddable, "joins").is_ok(),
            "admitted requests never seen in use stop counting"
        );
    }

    #[test]
    fn retries_are_spread_evenly_over_half_the_retry_after_again() {
        let base = Duration::from_secs(1);
        let mut bins = [0u32; 10];
        for nth in 0..1_000 {
            let retry = spread_retry(base, nth);
            assert!(retry >= base && retry < base * 3 / 2, "{nth}: {retry:?}");
            bins[((retry - base).as_millis() / 50) as usize] += 1;
        }
        // A burst of 1,000 refusals comes back over 500 ms, about 100 in each 50 ms.
        assert!(bins.iter().all(|&n| (90..=110).contains(&n)), "{bins:?}");
    }
}
