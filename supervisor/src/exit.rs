//! How a child ended: the exact classification restart decisions and traces use.

use std::fmt;

/// Why a child (worker or supervisor) stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// It stopped itself, or was stopped with no reason.
    Normal,
    /// It was stopped by someone with this reason (not Garrison's shutdown).
    Stopped(String),
    /// Its supervisor shut it down (ordered shutdown, a strategy, or `terminate_child`).
    Shutdown,
    /// It was killed: brutal kill, or a shutdown timeout ran out.
    Killed,
    /// Its handler panicked with this message.
    Panic(String),
    /// Its handler returned this error.
    Error(String),
    /// A (re)start failed with this reason.
    StartFailed(String),
    /// The worker's `start` gave up for good by returning [`Abandon`]: a `transient` child is
    /// not restarted (only a `permanent` one is).
    Abandoned(String),
    /// It is a supervisor whose restart intensity was exceeded.
    Escalated(String),
}

impl ExitReason {
    /// Whether a `transient` child is restarted after this exit (OTP: anything but normal and
    /// shutdown; Garrison adds a start its worker abandoned).
    pub fn is_abnormal(&self) -> bool {
        !matches!(
            self,
            ExitReason::Normal
                | ExitReason::Stopped(_)
                | ExitReason::Shutdown
                | ExitReason::Abandoned(_)
        )
    }

    /// A short, stable label for traces and metrics (`exit.kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            ExitReason::Normal => "normal",
            ExitReason::Stopped(_) => "stopped",
            ExitReason::Shutdown => "shutdown",
            ExitReason::Killed => "killed",
            ExitReason::Panic(_) => "panic",
            ExitReason::Error(_) => "error",
            ExitReason::StartFailed(_) => "start_failed",
            ExitReason::Abandoned(_) => "abandoned",
            ExitReason::Escalated(_) => "escalated",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Stopped(reason) => write!(f, "stopped: {reason}"),
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::Panic(message) => write!(f, "panic: {message}"),
            ExitReason::Error(message) => write!(f, "error: {message}"),
            ExitReason::StartFailed(reason) => write!(f, "start failed: {reason}"),
            ExitReason::Abandoned(reason) => write!(f, "start abandoned: {reason}"),
            ExitReason::Escalated(reason) => write!(f, "escalated: {reason}"),
        }
    }
}

/// Returned (as a [`HandlerError`](crate::HandlerError)) from [`Worker::start`] to give up on
/// the child for good: it exits [`ExitReason::Abandoned`] and a `transient` child is not
/// restarted, where any other start error counts as a crash and is retried. For a start that can
/// never succeed, such as a state that cannot be restored.
///
/// [`Worker::start`]: crate::Worker::start
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Abandon(pub String);

/// The stop reason Garrison passes to ractor for an ordered shutdown.
pub(crate) const SHUTDOWN_REASON: &str = "garrison:shutdown";

/// The error a Garrison-hosted actor fails with, so the supervisor can classify it exactly.
#[derive(Debug)]
pub(crate) struct ChildFailure(pub(crate) ExitReason);

impl fmt::Display for ChildFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ChildFailure {}

/// Classifies a ractor termination (`ActorTerminated`'s reason).
pub(crate) fn from_termination(reason: Option<&str>) -> ExitReason {
    match reason {
        None => ExitReason::Normal,
        Some(SHUTDOWN_REASON) => ExitReason::Shutdown,
        Some("killed") => ExitReason::Killed,
        Some(other) => ExitReason::Stopped(other.to_owned()),
    }
}

/// Classifies a failed spawn: a start that failed (or was abandoned) keeps its reason.
pub(crate) fn from_spawn_error(error: ractor::SpawnErr) -> ExitReason {
    match error {
        ractor::SpawnErr::StartupFailed(reason) => match from_failure(&*reason) {
            ExitReason::StartFailed(reason) => ExitReason::StartFailed(reason),
            ExitReason::Abandoned(reason) => ExitReason::Abandoned(reason),
            other => ExitReason::StartFailed(other.to_string()),
        },
        other => ExitReason::StartFailed(other.to_string()),
    }
}

/// Classifies a ractor failure (`ActorFailed`'s error).
pub(crate) fn from_failure(error: &(dyn std::error::Error + Send + Sync + 'static)) -> ExitReason {
    match error.downcast_ref::<ChildFailure>() {
        Some(ChildFailure(reason)) => reason.clone(),
        // ractor's own catch_unwind (outside our handlers) reports a panic as a string error.
        None => ExitReason::Panic(error.to_string()),
    }
}

/// The message carried by a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
