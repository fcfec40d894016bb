//! What a supervisor's stable handle and every incarnation of its actor share, and what every
//! supervisor of one tree shares.

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicBool, Ordering},
};

use ractor::ActorCell;
use tokio::sync::{broadcast, watch};

use crate::{exit::ExitReason, introspection::LifecycleEvent};

/// Shared by a supervisor's handle and every incarnation of its actor.
pub(crate) struct SupervisorShared {
    pub(crate) id: Arc<str>,
    /// The running incarnation; `None` while it is not running.
    current: RwLock<Option<ActorCell>>,
    /// Why the last incarnation exited; `None` while one runs.
    pub(crate) exit: watch::Sender<Option<ExitReason>>,
    tree: RwLock<Option<Tree>>,
    root: AtomicBool,
}

/// What every supervisor of one tree shares.
#[derive(Clone)]
pub(crate) struct Tree {
    pub(crate) events: broadcast::Sender<LifecycleEvent>,
    /// Set when the tree is going away for good: slots close so senders learn it at once.
    pub(crate) closing: Arc<AtomicBool>,
}

impl Tree {
    pub(crate) fn new(capacity: usize) -> Tree {
        Tree {
            events: broadcast::channel(capacity).0,
            closing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether the tree is going away for good.
    pub(crate) fn is_closing(&self) -> bool {
        // Acquire: pairs with the Release in `mark_closing`.
        self.closing.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for SupervisorShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorShared")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SupervisorShared {
    pub(crate) fn new(id: Arc<str>) -> Arc<SupervisorShared> {
        Arc::new(SupervisorShared {
            id,
            current: RwLock::new(None),
            exit: watch::channel(None).0,
            tree: RwLock::new(None),
            root: AtomicBool::new(false),
        })
    }

    pub(crate) fn current(&self) -> Option<ActorCell> {
        self.current
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    pub(crate) fn set_current(&self, cell: Option<ActorCell>) {
        *self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = cell;
    }

    pub(crate) fn tree(&self) -> Option<Tree> {
        self.tree
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    pub(crate) fn set_tree(&self, tree: Tree) {
        *self
            .tree
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(tree);
    }

    /// Whether this supervisor is its tree's root (nobody restarts it).
    pub(crate) fn is_root(&self) -> bool {
        // Acquire: pairs with the Release in `make_root`, done before the root is spawned.
        self.root.load(Ordering::Acquire)
    }

    pub(crate) fn make_root(&self) {
        self.root.store(true, Ordering::Release);
    }

    /// Marks the whole tree as going away for good.
    pub(crate) fn mark_closing(&self) {
        if let Some(tree) = self.tree() {
            // Release: pairs with the Acquire in `Tree::is_closing`.
            tree.closing.store(true, Ordering::Release);
        }
    }
}
