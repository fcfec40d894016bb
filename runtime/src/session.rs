//! Sessions: which entities a connected player may address, and the connection that receives
//! what entities push to the player.
//!
//! A reconnect swaps the connection atomically: frames pushed to the session go to exactly one
//! connection, the old one up to the swap and the new one after it, with no window where both or
//! neither receive (the reconnect races of Pitaya's issues #251 and #220 cannot happen).

use std::{collections::HashSet, fmt, sync::Arc};

use dashmap::DashMap;
use garrison_protocol::Frame;

use crate::{Entity, Error};

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
}

tokio::task_local! {
    /// The origin of the frame being routed, for the sends the router makes.
    static ORIGIN: Origin;
}

/// Runs `route` with `origin` as the origin of every message it sends.
pub(crate) fn with_origin<R>(origin: Origin, route: impl FnOnce() -> R) -> R {
    ORIGIN.sync_scope(origin, route)
}

/// The origin of the frame being routed, when called from its router.
pub(crate) fn current_origin() -> Option<Origin> {
    ORIGIN.try_with(Origin::clone).ok()
}

#[derive(Default)]
struct SessionState {
    bindings: HashSet<(&'static str, String)>,
    connection: Option<Arc<dyn Outbound>>,
    /// Bumped by every attach, so a grace timer set at one disconnect cannot close a session
    /// that was attached and detached again since.
    generation: u64,
}

/// The open sessions.
#[derive(Default)]
pub struct Sessions {
    sessions: DashMap<SessionId, SessionState>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("open", &self.sessions.len())
            .finish()
    }
}

impl Sessions {
    /// No sessions.
    pub fn new() -> Self {
        Sessions::default()
    }

    /// Attaches `connection` to session `id`, opening the session if needed, and returns the
    /// connection it replaced (already told it was [`replaced`](Outbound::replaced)).
    ///
    /// The swap happens under the session's write lock, which every [`Sessions::push`] takes
    /// for reading: a push completes wholly on the old connection or wholly on the new one.
    pub fn attach(
        &self,
        id: SessionId,
        connection: Arc<dyn Outbound>,
    ) -> Option<Arc<dyn Outbound>> {
        let old = {
            let mut session = self.sessions.entry(id).or_default();
            session.generation += 1;
            session.connection.replace(connection)
        };
        if let Some(old) = &old {
            old.replaced();
        }
        old
    }

    /// Opens session `id` with no connection attached, if it is not open; returns whether it
    /// opened it. Bindings can be made before a connection is attached.
    pub fn open(&self, id: SessionId) -> bool {
        match self.sessions.entry(id) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(vacant) => {
                vacant.insert(SessionState::default());
                true
            }
        }
    }

    /// Closes session `id` if no connection was ever attached to it (one that [`Sessions::open`]
    /// opened for a handshake that was then refused).
    pub fn discard_unattached(&self, id: SessionId) {
        self.sessions.remove_if(&id, |_, session| {
            session.connection.is_none() && session.generation == 0
        });
    }

    /// Detaches `connection` from session `id` if it is still the attached one (a connection
    /// that was replaced must not detach its successor). Bindings are kept for a reconnect.
    ///
    /// Returns the session's generation when it detached (`None` when another connection had
    /// already taken over); pass it to [`Sessions::close_if_detached`] at the end of a grace
    /// window.
    pub fn detach(&self, id: SessionId, connection: &Arc<dyn Outbound>) -> Option<u64> {
        if let Some(mut session) = self.sessions.get_mut(&id) {
            if session
                .connection
                .as_ref()
                .is_some_and(|current| Arc::ptr_eq(current, connection))
            {
                session.connection = None;
                return Some(session.generation);
            }
        }
        None
    }

    /// Closes session `id` if it is still detached since the detach that returned `generation`
    /// (the end of a reconnect grace window). Returns whether it closed.
    pub fn close_if_detached(&self, id: SessionId, generation: u64) -> bool {
        self.sessions
            .remove_if(&id, |_, session| {
                session.connection.is_none() && session.generation == generation
            })
            .is_some()
    }

    /// Closes session `id` for good: bindings and connection are dropped.
    pub fn close(&self, id: SessionId) {
        self.sessions.remove(&id);
    }

    /// Lets session `id` address entity `key` of kind `E`.
    ///
    /// # Errors
    /// [`Error::NoSession`] when the session is not open.
    pub fn bind<E: Entity>(&self, id: SessionId, key: &E::Key) -> Result<(), Error> {
        let mut session = self
            .sessions
            .get_mut(&id)
            .ok_or(Error::NoSession { session: id.0 })?;
        session.bindings.insert((E::KIND, key.to_string()));
        Ok(())
    }

    /// Withdraws a binding.
    pub fn unbind<E: Entity>(&self, id: SessionId, key: &E::Key) {
        if let Some(mut session) = self.sessions.get_mut(&id) {
            session.bindings.remove(&(E::KIND, key.to_string()));
        }
    }

    /// Checks that session `id` may address entity `key` of kind `E`.
    ///
    /// # Errors
    /// [`Error::NoSession`] or [`Error::NotBound`].
    pub fn check<E: Entity>(&self, id: SessionId, key: &E::Key) -> Result<(), Error> {
        let session = self
            .sessions
            .get(&id)
            .ok_or(Error::NoSession { session: id.0 })?;
        let key = key.to_string();
        if session.bindings.contains(&(E::KIND, key.clone())) {
            Ok(())
        } else {
            Err(Error::NotBound {
                session: id.0,
                kind: E::KIND,
                key,
            })
        }
    }

    /// Pushes a frame to the connection attached to session `id`.
    ///
    /// # Errors
    /// [`Error::NoSession`], [`Error::Detached`] between a disconnect and a reconnect, or
    /// [`Error::OutboundFull`] when the connection's queue refuses it (its own overflow policy
    /// decides what happens to the connection).
    pub fn push(&self, id: SessionId, frame: Frame) -> Result<(), Error> {
        self.push_with(id, frame, |connection, frame| connection.push(frame))
    }

    /// Pushes a state frame (see [`Outbound::push_latest`]) to session `id`'s connection.
    ///
    /// # Errors
    /// As [`Sessions::push`].
    pub fn push_latest(&self, id: SessionId, frame: Frame) -> Result<(), Error> {
        self.push_with(id, frame, |connection, frame| connection.push_latest(frame))
    }

    /// Pushes under the session's read lock, so an attach (which takes the write lock) happens
    /// wholly before or after it.
    fn push_with(
        &self,
        id: SessionId,
        frame: Frame,
        push: impl FnOnce(&dyn Outbound, Frame) -> Result<(), Frame>,
    ) -> Result<(), Error> {
        let session = self
            .sessions
            .get(&id)
            .ok_or(Error::NoSession { session: id.0 })?;
        let connection = session
            .connection
            .as_deref()
            .ok_or(Error::Detached { session: id.0 })?;
        push(connection, frame).map_err(|_| Error::OutboundFull { session: id.0 })
    }

    /// Whether session `id` is open.
    pub fn contains(&self, id: SessionId) -> bool {
        self.sessions.contains_key(&id)
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}
