//! The stable handle to a supervisor: introspection, run-time children, events, stop and wait.

use std::{any::Any, sync::Arc};

use ractor::ActorRef;
use tokio::sync::{broadcast, oneshot};

use crate::{
    ChildRef, ChildSpec, Error, SupervisorSpec,
    exit::{ExitReason, SHUTDOWN_REASON},
    introspection::{
        ChildCounts, ChildInfo, ChildStatus, LifecycleEvent, NodeSnapshot, TreeSnapshot,
    },
    policy::ChildKind,
    shared::SupervisorShared,
};

/// A stable handle to a supervisor, valid across its restarts by its parent.
#[derive(Clone)]
pub struct SupervisorRef {
    shared: Arc<SupervisorShared>,
}

impl std::fmt::Debug for SupervisorRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorRef")
            .field("id", &self.shared.id)
            .finish()
    }
}

/// A snapshot of one supervisor: its strategy and its children (with nested supervisors' handles).
type LevelSnapshot = (String, Vec<(ChildInfo, Option<SupervisorRef>)>);
/// A child found by id: its worker handle (type-erased) or its supervisor handle.
type Found = Option<(Option<Arc<dyn Any + Send + Sync>>, Option<SupervisorRef>)>;

/// What a handle asks of the supervisor actor (and what the actor tells itself).
pub(crate) enum Request {
    RestartDue { generation: u64 },
    StartFailed { id: Arc<str>, reason: ExitReason },
    WhichChildren(oneshot::Sender<Vec<ChildInfo>>),
    Snapshot(oneshot::Sender<LevelSnapshot>),
    Lookup(Arc<str>, oneshot::Sender<Found>),
    StartChild(Box<ChildSpec>, oneshot::Sender<Result<(), Error>>),
    TerminateChild(Arc<str>, oneshot::Sender<Result<(), Error>>),
    RestartChild(Arc<str>, oneshot::Sender<Result<(), Error>>),
}

// Local only, as `mailbox::Wake` (ractor's `cluster` feature needs the impl spelled out).
#[cfg(feature = "cluster")]
impl ractor::Message for Request {}

impl SupervisorSpec {
    /// The stable handle this supervisor will have once started.
    pub fn handle(&self) -> SupervisorRef {
        SupervisorRef {
            shared: self.shared.clone(),
        }
    }
}

impl crate::Start {
    /// The nested supervisor's handle, if this starts one.
    pub(crate) fn nested_handle(&self) -> Option<SupervisorRef> {
        self.nested.as_ref().map(|spec| spec.handle())
    }
}

impl SupervisorRef {
    pub(crate) fn shared(&self) -> &Arc<SupervisorShared> {
        &self.shared
    }

    /// The supervisor's id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Whether the supervisor is running now (started, and not stopped or escalated).
    pub fn is_running(&self) -> bool {
        self.shared.current().is_some()
    }

    fn actor(&self) -> Result<ActorRef<Request>, Error> {
        self.shared
            .current()
            .map(ActorRef::from)
            .ok_or_else(|| self.down())
    }

    fn down(&self) -> Error {
        Error::SupervisorDown {
            supervisor: self.shared.id.to_string(),
        }
    }

    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.actor()?
            .send_message(request(reply))
            .map_err(|_| self.down())?;
        answer.await.map_err(|_| self.down())
    }

    /// The children in start order (OTP `which_children`).
    ///
    /// # Errors
    /// [`Error::SupervisorDown`] when the supervisor is not running.
    pub async fn which_children(&self) -> Result<Vec<ChildInfo>, Error> {
        self.ask(Request::WhichChildren).await
    }

    /// Counts of the children (OTP `count_children`).
    ///
    /// # Errors
    /// [`Error::SupervisorDown`] when the supervisor is not running.
    pub async fn count_children(&self) -> Result<ChildCounts, Error> {
        let children = self.which_children().await?;
        Ok(ChildCounts {
            specs: children.len(),
            active: children
                .iter()
                .filter(|child| child.status == ChildStatus::Running)
                .count(),
            supervisors: children
                .iter()
                .filter(|child| child.kind == ChildKind::Supervisor)
                .count(),
            workers: children
                .iter()
                .filter(|child| child.kind == ChildKind::Worker)
                .count(),
        })
    }

    /// A serialisable picture of the whole tree under this supervisor.
    ///
    /// # Errors
    /// [`Error::SupervisorDown`] when this supervisor is not running; a nested supervisor that
    /// is restarting shows without its children.
    pub async fn snapshot(&self) -> Result<TreeSnapshot, Error> {
        let mut nodes = Vec::new();
        let (strategy, children) = self.ask(Request::Snapshot).await?;
        nodes.push(NodeSnapshot {
            parent: None,
            id: self.shared.id.to_string(),
            kind: "supervisor".into(),
            strategy: Some(strategy),
            status: "running".into(),
            restarts: 0,
            mailbox_depth: None,
        });
        // Depth-first without recursion: (parent index, children still to visit).
        let mut stack = vec![(0u32, children.into_iter())];
        while let Some((parent, mut rest)) = stack.pop() {
            let Some((info, nested)) = rest.next() else {
                continue;
            };
            stack.push((parent, rest));
            let index = nodes.len() as u32;
            let subtree = match nested {
                Some(nested) if info.status == ChildStatus::Running => {
                    nested.ask(Request::Snapshot).await.ok()
                }
                _ => None,
            };
            nodes.push(NodeSnapshot {
                parent: Some(parent),
                id: info.id.to_string(),
                kind: match info.kind {
                    ChildKind::Worker => "worker",
                    ChildKind::Supervisor => "supervisor",
                }
                .into(),
                strategy: subtree.as_ref().map(|(strategy, _)| strategy.clone()),
                status: match info.status {
                    ChildStatus::Running => "running",
                    ChildStatus::Restarting => "restarting",
                    ChildStatus::Terminated => "terminated",
                }
                .into(),
                restarts: info.restarts,
                mailbox_depth: info.mailbox_depth.map(|depth| depth as u64),
            });
            if let Some((_, grandchildren)) = subtree {
                stack.push((index, grandchildren.into_iter()));
            }
        }
        Ok(TreeSnapshot { nodes })
    }

    /// The stable handle of worker child `id` whose messages are `M`.
    ///
    /// # Errors
    /// [`Error::NoSuchChild`] when there is no such worker with messages of type `M`;
    /// [`Error::SupervisorDown`] when the supervisor is not running.
    pub async fn child<M: Send + 'static>(&self, id: &str) -> Result<ChildRef<M>, Error> {
        let found = self
            .ask(|reply| Request::Lookup(Arc::from(id), reply))
            .await?;
        found
            .and_then(|(handle, _)| handle?.downcast_ref::<ChildRef<M>>().cloned())
            .ok_or_else(|| Error::NoSuchChild {
                supervisor: self.shared.id.to_string(),
                child: id.to_owned(),
            })
    }

    /// The stable handle of nested supervisor `id`.
    ///
    /// # Errors
    /// As [`SupervisorRef::child`].
    pub async fn supervisor(&self, id: &str) -> Result<SupervisorRef, Error> {
        let found = self
            .ask(|reply| Request::Lookup(Arc::from(id), reply))
            .await?;
        found
            .and_then(|(_, nested)| nested)
            .ok_or_else(|| Error::NoSuchChild {
                supervisor: self.shared.id.to_string(),
                child: id.to_owned(),
            })
    }

    /// Starts a child at run time (dynamic supervisors, or adding to a static one).
    ///
    /// # Errors
    /// [`Error::MaxChildren`], [`Error::DuplicateChild`], [`Error::StartFailed`] (the child is
    /// not added), or [`Error::SupervisorDown`].
    pub async fn start_child(&self, spec: ChildSpec) -> Result<(), Error> {
        self.ask(|reply| Request::StartChild(Box::new(spec), reply))
            .await?
    }

    /// Stops child `id` with its shutdown policy; a dynamic supervisor forgets it, a static one
    /// keeps its spec for `restart_child`.
    ///
    /// # Errors
    /// [`Error::NoSuchChild`] or [`Error::SupervisorDown`].
    pub async fn terminate_child(&self, id: &str) -> Result<(), Error> {
        self.ask(|reply| Request::TerminateChild(Arc::from(id), reply))
            .await?
    }

    /// Restarts child `id` now: stops it if it runs, then starts it. Does not count toward the
    /// restart intensity (it is a request, not a crash).
    ///
    /// # Errors
    /// [`Error::NoSuchChild`], [`Error::StartFailed`] or [`Error::SupervisorDown`].
    pub async fn restart_child(&self, id: &str) -> Result<(), Error> {
        self.ask(|reply| Request::RestartChild(Arc::from(id), reply))
            .await?
    }

    /// Subscribes to the tree's lifecycle events (see
    /// [`EVENT_CHANNEL_CAPACITY`](crate::EVENT_CHANNEL_CAPACITY) for overflow).
    ///
    /// # Errors
    /// [`Error::SupervisorDown`] when the tree has not started.
    pub fn events(&self) -> Result<broadcast::Receiver<LifecycleEvent>, Error> {
        self.shared
            .tree()
            .map(|tree| tree.events.subscribe())
            .ok_or_else(|| self.down())
    }

    /// Stops the tree in order: children in reverse start order, each with its shutdown
    /// policy, nested supervisors recursively. Called on the root, worker handles close
    /// afterwards. Called on a nested supervisor, its parent sees a `Shutdown` exit and applies
    /// its restart type; use the parent's [`SupervisorRef::terminate_child`] to stop it for good.
    ///
    /// # Errors
    /// [`Error::SupervisorDown`] when it was not running.
    pub async fn stop(&self) -> Result<(), Error> {
        let actor = self.actor()?;
        if self.shared.is_root() {
            self.shared.mark_closing();
        }
        actor
            .get_cell()
            .stop_and_wait(Some(SHUTDOWN_REASON.to_owned()), None)
            .await
            .map_err(|_| self.down())
    }

    /// Waits until this supervisor's current incarnation exits and tells why: `Shutdown` after
    /// [`SupervisorRef::stop`], `Escalated` after its intensity was exceeded.
    pub async fn wait(&self) -> ExitReason {
        let mut exit = self.shared.exit.subscribe();
        loop {
            if let Some(reason) = exit.borrow_and_update().clone() {
                return reason;
            }
            if exit.changed().await.is_err() {
                return ExitReason::Shutdown;
            }
        }
    }
}
