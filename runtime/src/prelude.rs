//! What a game imports: `use garrison_runtime::prelude::*;`.
//!
//! The actor-module API (entities, their context and messages, sessions), the supervision tree
//! (`supervisor!` and its builder), the wire format (`messages!`, snapshots, frames, the
//! `Schema` derive every message type needs) and rkyv's derives, pinned to the format Garrison speaks; with the `gateway` feature, the gateway.
//!
//! The derives generate paths to a crate named `rkyv`, so a game lists `rkyv = "0.8"` among its
//! dependencies (Cargo unifies its features with Garrison's: little-endian, 32-bit pointers,
//! unaligned; enable no other format feature).

pub use garrison_protocol::{
    Frame, FrameMeta, Message, Protocol, Schema, Snapshot, Validated, control::RefusalCode,
    messages, snapshot,
};
pub use garrison_supervisor::{
    ChildSpec, Overflow, Restart, Start, SupervisorBuilder, SupervisorRef, supervisor,
};
pub use rkyv::{Archive, Deserialize, Serialize};

#[cfg(feature = "gateway")]
pub use crate::gateway::{Gateway, GatewayBuilder, GatewayConfig, SessionStart};
pub use crate::{
    Activation, CallError, Checkpoint, Entities, Entity, EntityContext, EntityMessage, EntityRef,
    Group, HandlerError, KindConfig, Placement, Refusal, Refused, Reply, Session, SessionEvent,
    SessionId, Sessions, Timer, TimerError, TimerId, entity_messages,
};
