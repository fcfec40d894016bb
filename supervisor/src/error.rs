//! The supervisor crate's one error type.

/// Why a supervision request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two children of one supervisor share an id.
    #[error("supervisor {supervisor}: duplicate child id {child}")]
    DuplicateChild {
        /// The supervisor's id.
        supervisor: String,
        /// The repeated child id.
        child: String,
    },
    /// A restart intensity that cannot work: zero period.
    #[error("supervisor {supervisor}: restart intensity period must be positive")]
    InvalidIntensity {
        /// The supervisor's id.
        supervisor: String,
    },
    /// A child failed to start; `start` reports the first such child and stops the ones before it.
    #[error("supervisor {supervisor}: child {child} failed to start: {reason}")]
    StartFailed {
        /// The supervisor's id.
        supervisor: String,
        /// The child that failed.
        child: String,
        /// Why it failed.
        reason: String,
    },
    /// The supervisor itself could not be spawned.
    #[error("supervisor {supervisor} could not be spawned: {reason}")]
    Spawn {
        /// The supervisor's id.
        supervisor: String,
        /// ractor's reason.
        reason: String,
    },
    /// No child with this id.
    #[error("supervisor {supervisor}: no child {child}")]
    NoSuchChild {
        /// The supervisor's id.
        supervisor: String,
        /// The id asked for.
        child: String,
    },
    /// A dynamic supervisor is at its `max_children`.
    #[error("supervisor {supervisor}: at its limit of {max} children")]
    MaxChildren {
        /// The supervisor's id.
        supervisor: String,
        /// The configured limit.
        max: usize,
    },
    /// The child exists but is not running (transient exit or awaiting a restart).
    #[error("supervisor {supervisor}: child {child} is not running")]
    NotRunning {
        /// The supervisor's id.
        supervisor: String,
        /// The child.
        child: String,
    },
    /// The supervisor has stopped (or is restarting) and cannot answer.
    #[error("supervisor {supervisor} is not running")]
    SupervisorDown {
        /// The supervisor's id.
        supervisor: String,
    },
    /// A request could not be queued: the child's mailbox is full.
    #[error("child {child}: mailbox full")]
    MailboxFull {
        /// The child.
        child: String,
    },
    /// A request could not be queued: the child is gone for good.
    #[error("child {child} is closed")]
    Closed {
        /// The child.
        child: String,
    },
    /// The child dropped a request's reply channel: it crashed handling it, or ignored it.
    #[error("child {child} dropped the request without a reply")]
    NoReply {
        /// The child.
        child: String,
    },
}
