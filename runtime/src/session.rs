//! Sessions: a logged-in player's place in the server, the unit of routing and delivery.
//!
//! A [`Session`] is bound to the entities it may address, one per kind, each binding carrying the
//! entity's key and optionally a value (a seat); its router sends to them through the bindings,
//! typed and checked without allocating. Entities reach the player through the session's
//! connection, which a reconnect swaps atomically: frames pushed to the session go to exactly one
//! connection, the old one up to the swap and the new one after it, with no window where both or
//! neither receive (the reconnect races of Pitaya's issues #251 and #220 cannot happen).

use std::{
    any::{Any, TypeId},
    fmt,
    sync::{Arc, RwLock},
    time::Duration,
};

use dashmap::DashMap;
use garrison_protocol::{
    Frame, FrameMeta, Message,
    control::{self, RefusalCode},
};

use crate::{
    Entities, Entity, EntityMessage,
    origin::{Outbound, SessionId},
    refusal::{Refusal, Refused},
};

/// One binding: the kind it is for, the target (`Target<E>`: registry and key), and the value
/// bound with it, if any.
struct Binding {
    kind: TypeId,
    target: Box<dyn Any + Send + Sync>,
    value: Option<Box<dyn Any + Send + Sync>>,
    /// Tells the bound entity of a lifecycle event (`notify::<E>`).
    notify: fn(&(dyn Any + Send + Sync), SessionId, SessionEvent),
}

/// What happened to a session, told to every entity it is bound to, as the message its kind's
/// [`EntityMessage::session_event`] makes of it (a kind that makes none is not told).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// Its first connection was attached.
    Connected,
    /// Its connection went away; the session waits `grace` for the player to come back (with
    /// the same ticket) before it closes.
    Disconnected {
        /// The reconnect grace window.
        grace: Duration,
    },
    /// A new connection took over: a reconnect within the grace window, or a second login that
    /// replaced the first.
    Resumed,
    /// The session closed for good (the grace window ran out, or the server closed it); its
    /// bindings are released right after this event.
    Closed,
    /// The session moved to another node of the fleet ([`Sessions::redirect`]): its player goes
    /// on there, and it is closed here; the frames its client sent before it heard of the move
    /// still reach the bindings, which are released when the old connection ends.
    Moved,
}

/// Tells the entity behind `target` (a `Target<E>`) of `event`, if its kind makes a message of
/// it. Sent as the session's, without waiting; a refused event is logged.
fn notify<E: Entity>(target: &(dyn Any + Send + Sync), session: SessionId, event: SessionEvent) {
    let Some(target) = target.downcast_ref::<Target<E>>() else {
        return;
    };
    let Some(message) = E::Message::session_event(session, event) else {
        return;
    };
    let arriving = matches!(event, SessionEvent::Connected | SessionEvent::Resumed);
    if let Err(refused) = target
        .entities
        .send_event(session, &target.key, message, arriving)
    {
        tracing::warn!(
            game.session.id = session.0,
            game.entity.kind = E::KIND,
            game.entity.key = %target.key,
            ?event,
            reason = %refused.reason,
            "a session event could not reach its entity"
        );
    }
}

impl SessionState {
    fn notify(&self, session: SessionId, event: SessionEvent) {
        for binding in &self.bindings {
            (binding.notify)(&*binding.target, session, event);
        }
    }
}

/// Where a binding sends: the kind's registry and the entity's key.
struct Target<E: Entity> {
    entities: Entities<E>,
    key: E::Key,
}

#[derive(Default)]
struct SessionState {
    connection: Option<Arc<dyn Outbound>>,
    /// Bumped by every attach, so a grace timer set at one disconnect cannot close a session
    /// that was attached and detached again since.
    generation: u64,
    /// At most one per kind; a handful per session, searched in order.
    bindings: Vec<Binding>,
    /// Set when the session is closed for good: sends and pushes are refused.
    closed: bool,
    /// Set when the session moved to another node ([`Sessions::redirect`]): it is closed, but
    /// what its old connection still reads (sent before the client heard of the move) goes on
    /// to its bindings until that connection ends.
    moved: bool,
}

struct SessionInner {
    id: SessionId,
    state: RwLock<SessionState>,
}

/// A player's session: kept across reconnects, bound to the entities it may address, and the
/// way entities reach the player. Cheap to clone (one shared handle); what the gateway hands the
/// game's router and hooks.
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn new(id: SessionId) -> Session {
        Session {
            inner: Arc::new(SessionInner {
                id,
                state: RwLock::new(SessionState::default()),
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SessionState> {
        // Only this module's short critical sections run under the lock.
        self.inner
            .state
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SessionState> {
        self.inner
            .state
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The session's id (the player the ticket admitted).
    pub fn id(&self) -> SessionId {
        self.inner.id
    }

    /// The player the session belongs to.
    pub fn player(&self) -> u64 {
        self.inner.id.0
    }

    /// Whether both handles are the same session.
    pub fn same_session(&self, other: &Session) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Lets the session address entity `key` of `entities`' kind, replacing its binding to
    /// another entity of that kind.
    pub fn bind<E: Entity>(&self, entities: &Entities<E>, key: E::Key) {
        self.install::<E>(entities, key, None);
    }

    /// As [`Session::bind`], with a value the router reads when it sends (the player's seat in
    /// a room), so no lookup of the game's own is needed per message.
    pub fn bind_with<E: Entity, V: Send + Sync + 'static>(
        &self,
        entities: &Entities<E>,
        key: E::Key,
        value: V,
    ) {
        self.install::<E>(entities, key, Some(Box::new(value)));
    }

    fn install<E: Entity>(
        &self,
        entities: &Entities<E>,
        key: E::Key,
        value: Option<Box<dyn Any + Send + Sync>>,
    ) {
        let binding = Binding {
            kind: TypeId::of::<E>(),
            target: Box::new(Target {
                entities: entities.clone(),
                key,
            }),
            value,
            notify: notify::<E>,
        };
        let mut state = self.write();
        state.bindings.retain(|bound| bound.kind != binding.kind);
        state.bindings.push(binding);
    }

    /// Withdraws the session's binding to kind `E`, if any.
    pub fn unbind<E: Entity>(&self) {
        self.write()
            .bindings
            .retain(|bound| bound.kind != TypeId::of::<E>());
    }

    /// The key of the entity of kind `E` the session is bound to.
    pub fn bound<E: Entity>(&self) -> Option<E::Key> {
        let state = self.read();
        find::<E>(&state).map(|(target, _)| target.key.clone())
    }

    fn not_bound<E: Entity>(&self, key: Option<&E::Key>) -> Refusal {
        Refusal::NotBound {
            session: self.inner.id,
            kind: E::KIND,
            key: key.map(ToString::to_string),
        }
    }

    /// Sends `message` to the entity of kind `E` the session is bound to, on its behalf (the
    /// handler sees the session; the span carries `game.session.id`).
    ///
    /// # Errors
    /// [`Refusal::NotBound`] when the session is bound to no entity of kind `E`, and whatever
    /// the entity's registry refuses; the message is handed back.
    pub fn send<E: Entity>(&self, message: E::Message) -> Result<(), Refused<E::Message>> {
        let state = self.read();
        if state.closed && !state.moved {
            return Err(Refused::new(
                Refusal::NoSession {
                    session: self.inner.id,
                },
                message,
            ));
        }
        match find::<E>(&state) {
            // Delivered under the read lock: a push never waits, and the binding cannot change
            // halfway.
            Some((target, _)) => target
                .entities
                .send_from(self.inner.id, &target.key, message),
            None => Err(Refused::new(self.not_bound::<E>(None), message)),
        }
    }

    /// Sends to entity `key` of kind `E`, which must be the one the session is bound to.
    ///
    /// # Errors
    /// As [`Session::send`]; [`Refusal::NotBound`] names the key when it is another entity's.
    pub fn send_to<E: Entity>(
        &self,
        key: &E::Key,
        message: E::Message,
    ) -> Result<(), Refused<E::Message>> {
        let bound = {
            let state = self.read();
            find::<E>(&state).is_some_and(|(target, _)| target.key == *key)
        };
        if bound {
            self.send::<E>(message)
        } else {
            Err(Refused::new(self.not_bound::<E>(Some(key)), message))
        }
    }

    /// Sends the message `build` makes from the binding's key and value to the entity of kind
    /// `E` the session is bound to (bound with [`Session::bind_with`] and a `V`).
    ///
    /// # Errors
    /// [`Refusal::NotBound`] when there is no such binding (nothing is built), or whatever the
    /// registry refuses, with the message built.
    pub fn send_with<E: Entity, V: 'static>(
        &self,
        build: impl FnOnce(&E::Key, &V) -> E::Message,
    ) -> Result<(), Refused<Option<E::Message>>> {
        let state = self.read();
        let found = find::<E>(&state).and_then(|(target, value)| {
            let value = value?.downcast_ref::<V>()?;
            Some((target, value))
        });
        let Some((target, value)) = found else {
            return Err(Refused::new(self.not_bound::<E>(None), None));
        };
        let message = build(&target.key, value);
        target
            .entities
            .send_from(self.inner.id, &target.key, message)
            .map_err(|refused| Refused::new(refused.reason, Some(refused.message)))
    }

    /// Queues a frame for the player, reliably (see [`Outbound::push`]).
    ///
    /// # Errors
    /// [`Refusal::Detached`] between a disconnect and a reconnect, [`Refusal::NoSession`] once
    /// closed, [`Refusal::OutboundFull`] when the connection's queue refuses it.
    pub fn push(&self, frame: Frame) -> Result<(), Refused<Frame>> {
        self.push_with(frame, |connection, frame| connection.push(frame))
    }

    /// Queues a state frame that the next supersedes (see [`Outbound::push_latest`]).
    ///
    /// # Errors
    /// As [`Session::push`].
    pub fn push_latest(&self, frame: Frame) -> Result<(), Refused<Frame>> {
        self.push_with(frame, |connection, frame| connection.push_latest(frame))
    }

    /// Pushes under the session's read lock, so an attach (which takes the write lock) happens
    /// wholly before or after it.
    fn push_with(
        &self,
        frame: Frame,
        push: impl FnOnce(&dyn Outbound, Frame) -> Result<(), Frame>,
    ) -> Result<(), Refused<Frame>> {
        let session = self.inner.id;
        let state = self.read();
        if state.closed {
            return Err(Refused::new(Refusal::NoSession { session }, frame));
        }
        let Some(connection) = state.connection.as_deref() else {
            return Err(Refused::new(Refusal::Detached { session }, frame));
        };
        push(connection, frame)
            .map_err(|frame| Refused::new(Refusal::OutboundFull { session }, frame))
    }

    /// Encodes `message` and queues it for the player.
    ///
    /// # Errors
    /// As [`Session::push`]; a message that cannot be encoded is refused as
    /// [`Refusal::OutboundFull`] after a warning (it is a bug in the game's message, not the
    /// player's fault).
    pub fn send_message<M: Message>(&self, message: &M) -> Result<(), Refusal> {
        let frame = encode(message, FrameMeta::seq(0), self.inner.id)?;
        self.push(frame).map_err(|refused| refused.reason)
    }

    /// Tells the player its frame `seq` was refused, with a code and a reason.
    ///
    /// # Errors
    /// As [`Session::send_message`].
    pub fn refuse(
        &self,
        seq: u32,
        code: RefusalCode,
        reason: impl Into<String>,
    ) -> Result<(), Refusal> {
        let refused = control::Refused {
            seq,
            code: code.code(),
            reason: reason.into(),
            retry_after_ms: 0,
        };
        crate::stats::refusal_sent(refused.code);
        let frame = encode(&refused, FrameMeta::reply_to(seq), self.inner.id)?;
        self.push(frame).map_err(|refused| refused.reason)
    }

    /// Attaches `connection`, returning the one it replaced (already told it was
    /// [`replaced`](Outbound::replaced)). `first` runs under the session's write lock just
    /// before: what it queues on `connection` (the gateway's `Welcome`) precedes every push, and
    /// no one who saw it can find the session still detached.
    fn attach(
        &self,
        connection: Arc<dyn Outbound>,
        first: impl FnOnce(),
    ) -> Option<Arc<dyn Outbound>> {
        let old = {
            let mut state = self.write();
            first();
            let event = match state.generation {
                0 => SessionEvent::Connected,
                _ => SessionEvent::Resumed,
            };
            state.generation += 1;
            let old = state.connection.replace(connection);
            // Told under the lock, so events reach entities in the order they happened; a send
            // never waits.
            state.notify(self.inner.id, event);
            old
        };
        if let Some(old) = &old {
            old.replaced();
        }
        old
    }

    /// Detaches `connection` if it is still the attached one; returns the generation it had.
    fn detach(&self, connection: &Arc<dyn Outbound>, grace: Duration) -> Option<u64> {
        let mut state = self.write();
        if state
            .connection
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, connection))
        {
            state.connection = None;
            state.notify(self.inner.id, SessionEvent::Disconnected { grace });
            return Some(state.generation);
        }
        None
    }

    fn close(&self) {
        self.close_with(SessionEvent::Closed);
    }

    fn close_with(&self, event: SessionEvent) {
        let mut state = self.write();
        if !state.closed && state.generation > 0 {
            state.notify(self.inner.id, event);
        }
        state.closed = true;
        state.connection = None;
        // The bindings hold registry handles: release them with the session.
        state.bindings.clear();
    }

    /// Queues `redirect` and closes the connection as moved, then closes the session, all under
    /// its write lock: no push can land between the redirect and the close.
    fn redirect(&self, redirect: Frame) -> Result<(), Refusal> {
        let mut state = self.write();
        if state.closed {
            return Err(Refusal::NoSession {
                session: self.inner.id,
            });
        }
        let Some(connection) = state.connection.take() else {
            return Err(Refusal::Detached {
                session: self.inner.id,
            });
        };
        let queued = connection.push(redirect);
        connection.moved();
        if state.generation > 0 {
            state.notify(self.inner.id, SessionEvent::Moved);
        }
        state.closed = true;
        // The bindings stay for the frames the old connection still reads: the client sent
        // them before it heard of the move. They go with the session, when that connection ends.
        state.moved = true;
        queued.map_err(|_| Refusal::OutboundFull {
            session: self.inner.id,
        })
    }
}

/// The binding of kind `E` in `state`, as its target and value.
fn find<E: Entity>(state: &SessionState) -> Option<(&Target<E>, Option<&(dyn Any + Send + Sync)>)> {
    let kind = TypeId::of::<E>();
    let binding = state.bindings.iter().find(|bound| bound.kind == kind)?;
    let target = binding.target.downcast_ref::<Target<E>>()?;
    Some((target, binding.value.as_deref()))
}

/// Encodes a message for one session, as a refusal when it cannot be.
fn encode<M: Message>(message: &M, meta: FrameMeta, session: SessionId) -> Result<Frame, Refusal> {
    garrison_protocol::encode_frame(message, meta).map_err(|error| {
        tracing::warn!(game.session.id = session.0, message = M::NAME, %error, "cannot encode");
        Refusal::OutboundFull { session }
    })
}

/// The open sessions.
#[derive(Default)]
pub struct Sessions {
    sessions: DashMap<SessionId, Session>,
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

    /// Session `id`, opened (with no connection yet) if it is not open; and whether it opened
    /// it. Bindings can be made before a connection is attached.
    pub fn open(&self, id: SessionId) -> (Session, bool) {
        let mut opened = false;
        let session = self
            .sessions
            .entry(id)
            .or_insert_with(|| {
                opened = true;
                Session::new(id)
            })
            .clone();
        (session, opened)
    }

    /// Session `id`, if it is open.
    pub fn get(&self, id: SessionId) -> Option<Session> {
        self.sessions.get(&id).map(|session| session.clone())
    }

    /// Attaches `connection` to session `id`, opening the session if needed, and returns the
    /// connection it replaced (already told it was [`replaced`](Outbound::replaced)).
    ///
    /// The swap happens under the session's write lock, which every push takes for reading: a
    /// push completes wholly on the old connection or wholly on the new one.
    pub fn attach(
        &self,
        id: SessionId,
        connection: Arc<dyn Outbound>,
    ) -> Option<Arc<dyn Outbound>> {
        self.open(id).0.attach(connection, || {})
    }

    /// As [`Sessions::attach`], running `first` under the session's write lock just before the
    /// swap (the gateway queues its `Welcome` there).
    #[cfg(any(feature = "gateway", test))]
    pub(crate) fn attach_after(
        &self,
        id: SessionId,
        connection: Arc<dyn Outbound>,
        first: impl FnOnce(),
    ) -> Option<Arc<dyn Outbound>> {
        self.open(id).0.attach(connection, first)
    }

    /// Detaches `connection` from session `id` if it is still the attached one (a connection
    /// that was replaced must not detach its successor). Bindings are kept for a reconnect.
    ///
    /// Returns the session's generation when it detached (`None` when another connection had
    /// already taken over); pass it to [`Sessions::close_if_detached`] at the end of a grace
    /// window.
    pub fn detach(&self, id: SessionId, connection: &Arc<dyn Outbound>) -> Option<u64> {
        self.detach_with_grace(id, connection, Duration::ZERO)
    }

    /// As [`Sessions::detach`], telling the bound entities the session waits `grace` for a
    /// reconnect ([`SessionEvent::Disconnected`]).
    pub fn detach_with_grace(
        &self,
        id: SessionId,
        connection: &Arc<dyn Outbound>,
        grace: Duration,
    ) -> Option<u64> {
        self.get(id)?.detach(connection, grace)
    }

    /// Closes session `id` if it is still detached since the detach that returned `generation`
    /// (the end of a reconnect grace window). Returns the closed session.
    pub fn close_if_detached(&self, id: SessionId, generation: u64) -> Option<Session> {
        let (_, session) = self.sessions.remove_if(&id, |_, session| {
            let state = session.read();
            state.connection.is_none() && state.generation == generation
        })?;
        session.close();
        Some(session)
    }

    /// Closes session `id` if no connection was ever attached to it (one that
    /// [`Sessions::open`] opened for a handshake that was then refused).
    pub fn discard_unattached(&self, id: SessionId) {
        if let Some((_, session)) = self.sessions.remove_if(&id, |_, session| {
            let state = session.read();
            state.connection.is_none() && state.generation == 0
        }) {
            session.close();
        }
    }

    /// Moves session `id` to another node of the fleet: its client is sent a
    /// [`Redirect`](garrison_protocol::control::Redirect) to `address` (node `node`) and its
    /// connection closes as `moved` (code 34) once what was queued before is written; the
    /// session is closed here at once (pushes are refused) and its bindings told
    /// [`SessionEvent::Moved`]. The frames its old connection reads until the client ends it
    /// (those sent before the client heard of the move) still go to its bindings, so no input
    /// in flight is lost; the bindings are released with the session, once that connection
    /// ends. Unlike a session that closes for good, the gateway's closed hook does not run:
    /// the player goes on, on the other node.
    ///
    /// # Errors
    /// [`Refusal::NoSession`] when it is not open, [`Refusal::Detached`] when it has no
    /// connection (its client reconnects wherever it will and is redirected then),
    /// [`Refusal::OutboundFull`] when the connection could not take the redirect (it closes as
    /// moved all the same, and the session is closed here).
    pub fn redirect(&self, id: SessionId, address: &str, node: &str) -> Result<(), Refusal> {
        let redirect = garrison_protocol::control::Redirect {
            address: address.to_owned(),
            node: node.to_owned(),
        };
        let frame = encode(&redirect, FrameMeta::default(), id)?;
        let session = self.get(id).ok_or(Refusal::NoSession { session: id })?;
        let redirected = session.redirect(frame);
        if !matches!(redirected, Err(Refusal::Detached { .. })) {
            self.sessions
                .remove_if(&id, |_, open| open.same_session(&session));
        }
        redirected
    }

    /// Closes session `id` for good: bindings and connection are dropped, and handles to it
    /// refuse sends and pushes.
    pub fn close(&self, id: SessionId) {
        if let Some((_, session)) = self.sessions.remove(&id) {
            session.close();
        }
    }

    /// Queues a frame for session `id`'s player (see [`Session::push`]).
    ///
    /// # Errors
    /// [`Refusal::NoSession`], or as [`Session::push`].
    pub fn push(&self, id: SessionId, frame: Frame) -> Result<(), Refused<Frame>> {
        match self.sessions.get(&id) {
            Some(session) => session.push(frame),
            None => Err(Refused::new(Refusal::NoSession { session: id }, frame)),
        }
    }

    /// Queues a state frame for session `id` (see [`Session::push_latest`]).
    ///
    /// # Errors
    /// As [`Sessions::push`].
    pub fn push_latest(&self, id: SessionId, frame: Frame) -> Result<(), Refused<Frame>> {
        match self.sessions.get(&id) {
            Some(session) => session.push_latest(frame),
            None => Err(Refused::new(Refusal::NoSession { session: id }, frame)),
        }
    }

    /// Encodes `message` and queues it for session `id`.
    ///
    /// # Errors
    /// As [`Session::send_message`], and [`Refusal::NoSession`].
    pub fn send_message<M: Message>(&self, id: SessionId, message: &M) -> Result<(), Refusal> {
        let frame = encode(message, FrameMeta::seq(0), id)?;
        self.push(id, frame).map_err(|refused| refused.reason)
    }

    /// Encodes `message` once, with sequence number `seq`, and queues the same frame for every
    /// session in `ids`. Returns how many took it; a session that did not (detached, closed,
    /// full) is its own connection's business, as with [`Sessions::push`].
    pub fn broadcast<M: Message>(
        &self,
        ids: impl IntoIterator<Item = SessionId>,
        seq: u32,
        message: &M,
    ) -> usize {
        let Ok(frame) = garrison_protocol::encode_frame(message, FrameMeta::seq(seq)) else {
            tracing::warn!(message = M::NAME, "cannot encode a broadcast");
            return 0;
        };
        ids.into_iter()
            .filter(|id| self.push(*id, frame.clone()).is_ok())
            .count()
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

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, thread};

    use garrison_protocol::control::Welcome;

    use super::*;

    fn welcome() -> Frame {
        garrison_protocol::encode_frame(
            &Welcome {
                session: 7,
                resumed: false,
            },
            FrameMeta::default(),
        )
        .unwrap()
    }

    /// The gateway's handshake: a client that has its `Welcome` may at once cause a push (a
    /// matchmaker answering it); that push must find the session attached, not detached.
    #[test]
    fn a_push_racing_the_first_frame_finds_the_session_attached() {
        let sessions = Arc::new(Sessions::new());
        let (queue, mut received) = tokio::sync::mpsc::channel::<Frame>(8);
        let (pushed, result) = mpsc::channel();
        let mut pusher = None;
        sessions.attach_after(SessionId(7), Arc::new(queue.clone()), || {
            queue.try_send(welcome()).unwrap();
            let sessions = sessions.clone();
            pusher = Some(thread::spawn(move || {
                let outcome = sessions.push(SessionId(7), welcome());
                pushed
                    .send(outcome.map_err(|refused| refused.reason))
                    .unwrap();
            }));
            // The push is held until the attach is done; given time, it still has not returned.
            assert!(
                result.recv_timeout(Duration::from_millis(100)).is_err(),
                "a push returned while the first frame was being queued"
            );
        });
        pusher.unwrap().join().unwrap();
        assert_eq!(
            result.recv().unwrap(),
            Ok(()),
            "the racing push was refused"
        );
        assert!(received.try_recv().is_ok(), "the first frame");
        assert!(received.try_recv().is_ok(), "then the racing push");
    }
}
