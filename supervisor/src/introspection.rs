//! What a supervision tree says about itself: lifecycle events, child listings and counts, and
//! the serialisable picture of a whole tree.

use std::{sync::Arc, time::Duration};

use crate::{
    exit::ExitReason,
    policy::{ChildKind, Restart},
};

/// Capacity of a tree's lifecycle-event channel. A subscriber that falls further behind loses
/// the oldest events and is told how many it missed (`broadcast::error::RecvError::Lagged`);
/// the supervisor never blocks on a slow subscriber.
pub const EVENT_CHANNEL_CAPACITY: usize = 4096;

/// What happened in a supervision tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// The supervisor that acted.
    pub supervisor: Arc<str>,
    /// The child concerned (the supervisor's own id for `Escalated` and `ShutDown`).
    pub child: Arc<str>,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// A child started (its first start or a restart).
    Started,
    /// A child exited on its own (crash, error, or normal stop).
    Exited(ExitReason),
    /// The supervisor stopped a child (shutdown, strategy, or `terminate_child`).
    Stopped(ExitReason),
    /// A child will be restarted after `delay`; `restarts` counts its restarts so far.
    Restarting {
        /// The backoff delay (zero without backoff).
        delay: Duration,
        /// This child's restart count, including this one.
        restarts: u32,
    },
    /// The supervisor exceeded its restart intensity, stopped its children and failed.
    Escalated,
    /// The supervisor finished an ordered shutdown.
    ShutDown,
    /// A dynamic supervisor gave up on a crash-looping child ([`crate::CrashLoop::RemoveChild`]).
    GaveUp,
}

/// What a running child looks like from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    /// Its id.
    pub id: Arc<str>,
    /// Worker or supervisor.
    pub kind: ChildKind,
    /// Its restart type.
    pub restart: Restart,
    /// Running, restarting or terminated.
    pub status: ChildStatus,
    /// How often it was restarted.
    pub restarts: u32,
    /// Messages waiting in its mailbox (workers only).
    pub mailbox_depth: Option<usize>,
}

/// A child's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStatus {
    /// Running.
    Running,
    /// Waiting for (or in) a restart.
    Restarting,
    /// Exited and not restarted (a transient child that ended normally, or a terminated child).
    Terminated,
}

/// Counts of a supervisor's children (OTP `count_children`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChildCounts {
    /// All child specs.
    pub specs: usize,
    /// Running children.
    pub active: usize,
    /// Children that are supervisors.
    pub supervisors: usize,
    /// Children that are workers.
    pub workers: usize,
}

/// A serialisable picture of a whole tree: its nodes depth-first, the root supervisor first.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TreeSnapshot {
    /// Every supervisor and worker, depth-first in start order; `nodes[0]` is the root.
    pub nodes: Vec<NodeSnapshot>,
}

/// One supervisor or worker in a [`TreeSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeSnapshot {
    /// Index of the parent supervisor in `nodes`; `None` for the root.
    pub parent: Option<u32>,
    /// The id.
    pub id: String,
    /// `worker` or `supervisor`.
    pub kind: String,
    /// A supervisor's strategy (OTP name); `None` for a worker or a supervisor not running.
    pub strategy: Option<String>,
    /// `running`, `restarting` or `terminated`.
    pub status: String,
    /// Restart count (0 for the root).
    pub restarts: u32,
    /// Mailbox depth (workers).
    pub mailbox_depth: Option<u64>,
}
