//! Which code runs on which async runtime. This module is the one place that says it.
//!
//! - **Entities and supervisors** run on the tokio multi-thread runtime the application starts
//!   (`#[tokio::main]`). ractor spawns their actors there. An `Entities` registry remembers the
//!   runtime it was created on and starts activations there, whoever sends, except for a kind
//!   placed on its sessions' loops (`Placement::SessionLoop`): an activation caused on a gateway
//!   event loop (a session's input, or an entity running there) runs on that loop; and for a
//!   kind a running gateway hosts (`GatewayBuilder::hosts`), whose activations take the
//!   gateway's loops in turn (see `placement`).
//! - **The gateway** runs on its own thread with an actix `System` and one actix-rt arbiter per
//!   event loop (a single-threaded tokio runtime each). A connection lives entirely on one
//!   arbiter: its actor (reading, handshake, limits, routing) and its writer task. actix types
//!   never leave `gateway`.
//! - **They meet** through runtime-agnostic, non-blocking calls only: a connection delivers a
//!   message with `Session::send` (a push into a bounded mailbox), and entities reach a
//!   connection with `Session::push` (a push into its bounded outbound queue: written to the
//!   socket at once when the queue is idle, else picked up by its writer, woken through a
//!   `tokio::sync::Notify`). Nothing awaits across the boundary.
//! - **Telemetry's exporter** is built and flushed on the tokio runtime, never on an arbiter.

/// The tokio runtime the caller is on, if any.
pub(crate) fn current() -> Option<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current().ok()
}
