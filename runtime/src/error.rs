//! The runtime crate's one error type.

/// Why the runtime refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A session tried to address an entity it is not bound to.
    #[error("session {session} is not bound to {kind} {key}")]
    NotBound {
        /// The session.
        session: u64,
        /// The entity kind.
        kind: &'static str,
        /// The entity key.
        key: String,
    },
    /// No session with this id is open.
    #[error("no open session {session}")]
    NoSession {
        /// The session id.
        session: u64,
    },
    /// The session has no connection attached (between a disconnect and a reconnect).
    #[error("session {session} has no connection")]
    Detached {
        /// The session id.
        session: u64,
    },
    /// The connection's outbound queue refused the frame (full or closed).
    #[error("session {session}: outbound queue refused the frame")]
    OutboundFull {
        /// The session id.
        session: u64,
    },
    /// The entity kind is not attached to a running supervision tree yet.
    #[error("entity kind {kind} is not started")]
    KindNotStarted {
        /// The kind.
        kind: &'static str,
    },
    /// A snapshot could not be written or read.
    #[error("snapshot of {kind} {key}: {reason}")]
    Snapshot {
        /// The kind.
        kind: &'static str,
        /// The key.
        key: String,
        /// The protocol's reason.
        reason: String,
    },
    /// Telemetry could not be installed.
    #[error("telemetry: {reason}")]
    Telemetry {
        /// Why.
        reason: String,
    },
    /// The gateway could not start.
    #[error("gateway: {reason}")]
    Gateway {
        /// Why.
        reason: String,
    },
}
