//! What an entity kind measures about itself, for operators: the time messages wait in
//! mailboxes, timer ticks run late and handlers take (histograms, from the moment a metrics
//! registry or an overload limit first reads the kind; handler time only for a registry), and
//! the causes its entities crashed of (always).
//!
//! Crash causes are *fingerprints*: the exit kind and where it happened (a panic's source
//! location, or an error's text with its numbers blanked), never the full message, so one bug
//! is one line however many keys, players or values it hit. A kind keeps at most
//! [`MAX_CAUSES`] of them; later new causes are counted together as `other`.

use std::{
    sync::{
        Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use garrison_protocol::{TraceContext, control::RefusalCode};

/// The upper bounds (seconds) of the latency histograms' buckets: from 50 µs to 1 s, with a
/// bucket at one 60 Hz tick (16.7 ms).
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.016_7, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0,
];

/// How many distinct crash causes a kind keeps; further new ones count as `other`.
pub const MAX_CAUSES: usize = 32;

/// A latency histogram: one relaxed atomic add per bucket hit, so recording never locks.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Per bucket (not cumulative); the last counts what is above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A histogram read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// The sum of all observations, in seconds.
    pub sum: f64,
    /// How many observations.
    pub count: u64,
    /// `(upper bound in seconds, cumulative count)` per bucket, the last bound `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        // Relaxed: independent statistics counters.
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.buckets)
            .map(|(bound, count)| {
                cumulative += count.load(Ordering::Relaxed);
                (bound, cumulative)
            })
            .collect();
        HistogramSnapshot {
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: cumulative,
            buckets,
        }
    }
}

/// One crash cause of a kind, as counted so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashCause {
    /// `panic`, `error` (a handler returned an error) or `activation` (an activation failed).
    pub exit: &'static str,
    /// The fingerprint: a panic's `file:line`, or the error's text with digits blanked (`#`)
    /// and cut at 80 bytes; `other` once the kind holds [`MAX_CAUSES`].
    pub cause: String,
    /// How many incarnations ended of it.
    pub count: u64,
    /// When it was first seen.
    pub first_seen: SystemTime,
    /// When it was last seen.
    pub last_seen: SystemTime,
    /// The trace of a message that caused it (the latest that carried one), to open in Jaeger.
    pub example_trace: Option<TraceContext>,
}

/// A kind's measurements.
#[derive(Debug, Default)]
pub(crate) struct KindStats {
    /// Set once something reads the histograms (a metrics registry): until then handling
    /// takes no clock readings for them.
    timed: AtomicBool,
    handlers_timed: AtomicBool,
    pub(crate) mailbox_wait: Histogram,
    /// From a timer tick's due time to its handler's start (a room's tick overrun).
    pub(crate) tick_lateness: Histogram,
    /// Handler time per `game.event.type` (a protocol's message names: a bounded set).
    handler: RwLock<Vec<(&'static str, std::sync::Arc<Histogram>)>>,
    causes: Mutex<Vec<CrashCause>>,
    checkpoints: AtomicU64,
}

impl KindStats {
    /// Starts timing mailbox waits and tick lateness (what an overload limit reads).
    pub(crate) fn time(&self) {
        self.timed.store(true, Ordering::Relaxed);
    }

    /// Starts timing handlers too (what a metrics registry reads).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))] // read by `metrics` only
    pub(crate) fn time_handlers(&self) {
        self.time();
        self.handlers_timed.store(true, Ordering::Relaxed);
    }

    /// Whether handlers are timed.
    pub(crate) fn handlers_timed(&self) -> bool {
        self.handlers_timed.load(Ordering::Relaxed)
    }

    /// Whether handling is timed.
    pub(crate) fn timed(&self) -> bool {
        // Relaxed: a flag set once; a message or two untimed after it flips is harmless.
        self.timed.load(Ordering::Relaxed)
    }

    /// Counts a snapshot taken (while measured: a shared counter costs every checkpoint).
    pub(crate) fn checkpointed(&self) {
        if self.timed() {
            // Relaxed: a statistics counter.
            self.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Snapshots taken since the kind was first measured.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))] // read by `metrics` only
    pub(crate) fn checkpoints(&self) -> u64 {
        self.checkpoints.load(Ordering::Relaxed)
    }

    /// Records a handler's time for `event`.
    pub(crate) fn handled(&self, event: &'static str, elapsed: Duration) {
        {
            let handlers = self
                .handler
                .read()
                .unwrap_or_else(|poison| poison.into_inner());
            if let Some((_, histogram)) = handlers.iter().find(|(known, _)| *known == event) {
                histogram.observe(elapsed);
                return;
            }
        }
        let mut handlers = self
            .handler
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        let histogram = match handlers.iter().find(|(known, _)| *known == event) {
            Some((_, histogram)) => histogram.clone(),
            None => {
                let histogram = std::sync::Arc::new(Histogram::default());
                handlers.push((event, histogram.clone()));
                histogram
            }
        };
        histogram.observe(elapsed);
    }

    /// Handler time per event type, read now.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))] // read by `metrics` only
    pub(crate) fn handler_times(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        self.handler
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .map(|(event, histogram)| (*event, histogram.snapshot()))
            .collect()
    }

    /// Counts one crash of `exit` kind with this fingerprint.
    pub(crate) fn crashed(&self, exit: &'static str, cause: String, trace: Option<TraceContext>) {
        let now = SystemTime::now();
        let mut causes = self
            .causes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let cause = if causes.len() >= MAX_CAUSES
            && !causes
                .iter()
                .any(|known| known.exit == exit && known.cause == cause)
        {
            "other".to_owned()
        } else {
            cause
        };
        match causes
            .iter_mut()
            .find(|known| known.exit == exit && known.cause == cause)
        {
            Some(known) => {
                known.count += 1;
                known.last_seen = now;
                if trace.is_some() {
                    known.example_trace = trace;
                }
            }
            None => causes.push(CrashCause {
                exit,
                cause,
                count: 1,
                first_seen: now,
                last_seen: now,
                example_trace: trace,
            }),
        }
    }

    /// The crash causes, most frequent first.
    pub(crate) fn causes(&self) -> Vec<CrashCause> {
        let mut causes = self
            .causes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        causes.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.cause.cmp(&b.cause)));
        causes
    }
}

/// The fingerprint of a failure's text: digits blanked to `#` (keys, indexes, sizes vary; the
/// bug does not), cut at 80 bytes on a character boundary.
pub(crate) fn fingerprint(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(80));
    for character in text.chars() {
        let character = if character.is_ascii_digit() {
            '#'
        } else {
            character
        };
        if out.len() + character.len_utf8() > 80 {
            break;
        }
        // Runs of blanked digits read as one: `index # out of range for length #`.
        if character == '#' && out.ends_with('#') {
            continue;
        }
        out.push(character);
    }
    out
}

/// `Refused` frames sent to clients in this process, per [`RefusalCode::ALL`] entry.
static REFUSALS_SENT: [AtomicU64; RefusalCode::ALL.len()] =
    [const { AtomicU64::new(0) }; RefusalCode::ALL.len()];

/// Counts a `Refused` sent with wire code `code` (an unknown code is not counted).
pub(crate) fn refusal_sent(code: u16) {
    if let Some(index) = RefusalCode::ALL
        .iter()
        .position(|known| known.code() == code)
    {
        // Relaxed: independent statistics counters.
        REFUSALS_SENT[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// `Refused` frames sent to clients by this process so far, per code.
pub fn refusals_sent() -> Vec<(RefusalCode, u64)> {
    RefusalCode::ALL
        .iter()
        .zip(&REFUSALS_SENT)
        .map(|(code, count)| (*code, count.load(Ordering::Relaxed)))
        .collect()
}

thread_local! {
    /// Where the last panic on this thread happened and what it said, set by the hook
    /// [`install_panic_hook`] installs.
    static LAST_PANIC: std::cell::RefCell<Option<(String, String)>> =
        const { std::cell::RefCell::new(None) };
}

/// Installs (once per process) a panic hook that notes where each panic happened before
/// calling the hook that was there before it (the default one prints the panic as usual), so a
/// crash's fingerprint can name its `file:line`. A hook set later by the game replaces it; the
/// fingerprints then fall back to the panic's text.
pub(crate) fn install_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(location) = info.location() {
                let place = format!("{}:{}", location.file(), location.line());
                let payload = info.payload();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|text| (*text).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                // `try_with`: a panic while this thread's locals are being destroyed must not
                // panic again here (that would abort the process).
                let _ = LAST_PANIC.try_with(|last| {
                    if let Ok(mut last) = last.try_borrow_mut() {
                        *last = Some((place, message));
                    }
                });
            }
            previous(info);
        }));
    });
}

/// Takes where the last panic on this thread happened, if the hook saw it and it said
/// `message` (so a location noted for an earlier, unrelated panic is never taken).
pub(crate) fn take_panic_location(message: &str) -> Option<String> {
    LAST_PANIC.with(|last| {
        let (place, said) = last.borrow_mut().take()?;
        (said == message).then_some(place)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_blank_numbers_and_stay_short() {
        assert_eq!(
            fingerprint("index out of bounds: the len is 3 but the index is 120"),
            "index out of bounds: the len is # but the index is #"
        );
        assert_eq!(fingerprint(&"é".repeat(100)).len(), 80);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(10));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(5));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.buckets[0], (0.000_05, 1));
        let at_5ms = snapshot.buckets.iter().find(|(bound, _)| *bound == 0.005);
        assert_eq!(at_5ms, Some(&(0.005, 2)));
        assert_eq!(snapshot.buckets.last(), Some(&(f64::INFINITY, 3)));
        assert!((snapshot.sum - 5.003_01).abs() < 1e-6);
    }

    #[test]
    fn causes_are_bounded_and_counted() {
        let stats = KindStats::default();
        for index in 0..MAX_CAUSES + 5 {
            stats.crashed("error", format!("cause {}", "x".repeat(index)), None);
        }
        stats.crashed("error", "cause ".to_owned(), None);
        let causes = stats.causes();
        assert_eq!(causes.len(), MAX_CAUSES + 1);
        assert_eq!(causes[0].cause, "other");
        assert_eq!(causes[0].count, 5);
        assert_eq!(causes[1].cause, "cause ");
        assert_eq!(causes[1].count, 2);
    }
}
