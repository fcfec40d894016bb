//! The runtime crate's one error type.

/// Why the runtime refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A kind's configuration cannot make its supervisor (a zero restart period).
    #[error("entity kind {kind}: invalid configuration: {reason}")]
    InvalidKindConfig {
        /// The kind.
        kind: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `serve` was called on a kind that is served already.
    #[error("entity kind {kind} is served already")]
    AlreadyServed {
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
    /// A gateway was started to route to a kind whose registry is not running in a tree (or
    /// not served).
    #[error(
        "entity kind {kind} is routed to but {why}: add `entities \"{kind}\" => registry.start();` \
         to the `supervisor!` tree (and serve the kind) and start the tree before the gateway"
    )]
    KindNotRunning {
        /// The kind.
        kind: &'static str,
        /// "not served" or "not running".
        why: &'static str,
    },
    /// The gateway could not start.
    #[error("gateway: {reason}")]
    Gateway {
        /// Why.
        reason: String,
    },
}
