//! Who a message comes from: the session id, the connection a session delivers to (`Outbound`),
//! and, for work a client's frame caused, the frame's `Origin`, so a failure to handle it can be
//! answered to that client.

use std::{fmt, sync::Arc};

use garrison_protocol::Frame;

/// A session id: one per logged-in player, kept across reconnects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a session's outbound frames go: a connection's bounded output queue.
pub trait Outbound: Send + Sync + 'static {
    /// Queues a frame for the client, or hands it back when the queue cannot take it.
    ///
    /// # Errors
    /// The frame, when the queue is full or closed.
    fn push(&self, frame: Frame) -> Result<(), Frame>;

    /// Queues a state frame that the next one supersedes (a position, a snapshot): when the
    /// queue is full, an older state frame may be dropped instead. Defaults to [`Outbound::push`].
    ///
    /// # Errors
    /// The frame, when it cannot be queued.
    fn push_latest(&self, frame: Frame) -> Result<(), Frame> {
        self.push(frame)
    }

    /// Tells the connection it was replaced by a newer one; it should close with that reason.
    fn replaced(&self) {}

    /// Tells the connection its session moved to another node (a `Redirect` was queued); it
    /// should close with that reason once what is queued is written.
    fn moved(&self) {}
}

/// A bounded tokio channel is an outbound queue: `try_send`, never waiting.
impl Outbound for tokio::sync::mpsc::Sender<Frame> {
    fn push(&self, frame: Frame) -> Result<(), Frame> {
        self.try_send(frame).map_err(|error| match error {
            tokio::sync::mpsc::error::TrySendError::Full(frame)
            | tokio::sync::mpsc::error::TrySendError::Closed(frame) => frame,
        })
    }
}

/// Where a message came from when a client's frame caused it: the connection that sent the
/// frame and the frame's sequence number, so a failure to handle it can be answered to that
/// client (a `Refused` carrying the `seq`) instead of leaving it to time out.
#[derive(Clone)]
pub(crate) struct Origin {
    pub(crate) connection: Arc<dyn Outbound>,
    pub(crate) seq: u32,
    /// The session the frame came in.
    pub(crate) session: SessionId,
}

impl Origin {
    /// Sends `message` to the client as the answer to its frame: its `seq`, the reply flag.
    /// Returns false when it cannot go (a message that does not encode, logged; or the
    /// connection's queue refused it, which is the connection's own business).
    pub(crate) fn answer<M: garrison_protocol::Message>(&self, message: &M) -> bool {
        let meta = garrison_protocol::FrameMeta::reply_to(self.seq);
        match garrison_protocol::encode_frame(message, meta) {
            Ok(frame) => self.connection.push(frame).is_ok(),
            Err(error) => {
                tracing::warn!(message = M::NAME, %error, "cannot encode a reply");
                false
            }
        }
    }
}

tokio::task_local! {
    /// The origin of the frame being routed, for the sends the router makes. (An entity passes
    /// its message's origin on explicitly, with `EntityContext::forward`: a task-local scope
    /// around every handler would make each entity's task hold its handler's future twice.)
    static ORIGIN: Origin;
}

/// Runs `route` with `origin` as the origin of every message it sends.
#[cfg(feature = "gateway")]
pub(crate) fn with_origin<R>(origin: Origin, route: impl FnOnce() -> R) -> R {
    ORIGIN.sync_scope(origin, route)
}

/// The origin of the frame being routed, when called from its router.
pub(crate) fn current_origin() -> Option<Origin> {
    ORIGIN.try_with(Origin::clone).ok()
}
