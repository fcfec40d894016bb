//! The policies a child spec and a supervisor declare: restart types, shutdown, strategies,
//! auto-shutdown, restart intensity, crash-loop handling, backoff, and the game attributes a
//! child carries into its traces.

use std::{sync::Arc, time::Duration};

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
    /// A [`Worker`](crate::Worker).
    Worker,
    /// A nested supervisor.
    Supervisor,
}
