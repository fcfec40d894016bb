//! The gateway: TCP and WebSocket listeners whose connections run as actix actors on per-core
//! actix-rt arbiters (event loops), each polling many connections.
//!
//! A connection must open with a `Hello` carrying a valid ticket within the handshake deadline;
//! it then becomes its player's session (taking over an older connection of the same player),
//! and each frame it sends is validated once and routed, without a copy, by the game's router to
//! the entities the session is bound to. Every limit has a default and a close reason: frame
//! size, messages and bytes per second, handshake deadline, idle timeout, a bounded outbound queue
//! ([`Delivery`] policy), and a connection limit.
//!
//! actix is confined to this module (the actix actor crate is in passive maintenance): nothing
//! outside it names an actix type. See [`crate::concurrency`] for what runs where.

mod admission;
mod close;
mod connection;
mod limits;
mod outbound;
/// Tickets, as the wire crate mints and checks them (`garrison_protocol::ticket`).
pub use garrison_protocol::ticket;

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use dashmap::DashMap;
use garrison_protocol::{DEFAULT_MAX_FRAME_LEN, FrameMeta, MessageKind, Protocol, control};

pub use close::CloseCode;
pub use garrison_protocol::control::RefusalCode;
pub use outbound::Delivery;

use crate::{Entities, Entity, Error, Refusal, Session, Sessions};

/// Gateway settings. Every limit has a default meant for a real game server.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where to listen for TCP; `None` for no TCP listener.
    pub tcp: Option<SocketAddr>,
    /// Where to listen for WebSocket; `None` for no WebSocket listener.
    pub websocket: Option<SocketAddr>,
    /// Event loops (arbiters); default: one per core.
    pub event_loops: usize,
    /// Most connections at once; more are refused with `ServerFull`. At start the gateway raises
    /// the open-file soft limit toward the hard limit and lowers this to what the limit allows
    /// minus `fd_reserve` ([`Gateway::max_connections`] tells the result).
    pub max_connections: usize,
    /// Descriptors kept for everything but connections (listeners, event loops, files, stores,
    /// exporters, refused connections being closed); at most a quarter of the open-file limit.
    pub fd_reserve: usize,
    /// Largest frame accepted, checked on the length prefix before anything is buffered.
    pub max_frame_len: usize,
    /// Sustained messages per second per connection.
    pub messages_per_second: u32,
    /// Messages a connection may send in a burst.
    pub message_burst: u32,
    /// Sustained bytes per second per connection.
    pub bytes_per_second: u32,
    /// Bytes a connection may send in a burst.
    pub byte_burst: u32,
    /// Time allowed for the `Hello`.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Frames queued for a connection before its [`Delivery`] policy applies.
    pub outbound_capacity: usize,
    /// How long a write may stall before the connection counts as a slow consumer.
    pub write_timeout: Duration,
    /// The secret tickets are signed with.
    pub ticket_key: Vec<u8>,
    /// The longest a ticket may still be valid when it is presented: one that expires later is
    /// refused (`BadTicket`), so a leaked ticket cannot be replayed for years.
    pub max_ticket_lifetime: Duration,
    /// The kernel send buffer of each connection (`SO_SNDBUF`), so the bounded outbound queue, not
    /// the kernel's autotuned buffer (up to 4 MiB), is what holds a slow client's backlog; `None`
    /// leaves the system default.
    pub socket_send_buffer: Option<usize>,
    /// Connections the kernel completes for each listener before the gateway accepts them
    /// (`listen(2)`'s backlog, capped by `net.core.somaxconn`; default 4,096). A login storm (a
    /// server's players reconnecting at once after a restart) beyond it overflows the queue:
    /// the kernel drops SYNs (the client retries after 1 s, 3 s, ...) or answers with SYN
    /// cookies and may reset a client whose handshake it completed.
    pub listen_backlog: u32,
    /// After its `Close` is written, how long a connection keeps reading (and discarding) while
    /// waiting for the client to close its side, so unread input never turns the close into a
    /// reset that destroys the `Close` in flight.
    pub close_linger: Duration,
    /// How long a graceful shutdown waits for outbound queues to drain.
    pub drain_timeout: Duration,
    /// How long a disconnected player's session (and its bindings) is kept for a reconnect
    /// before it is closed.
    pub reconnect_grace: Duration,
    /// The `game.world.zone` recorded on the gateway's frame spans (the world partition this
    /// gateway serves), if any.
    pub zone: Option<std::sync::Arc<str>>,
    /// The game's layout hash ([`schema::Document::layout_hash`]); a `Hello` carrying another
    /// is closed with `LayoutMismatch`. `None` accepts any.
    ///
    /// [`schema::Document::layout_hash`]: garrison_protocol::schema::Document::layout_hash
    pub layout: Option<u64>,
}

impl GatewayConfig {
    /// Defaults, listening on nothing, with this ticket key.
    pub fn new(ticket_key: impl Into<Vec<u8>>) -> Self {
        GatewayConfig {
            tcp: None,
            websocket: None,
            event_loops: std::thread::available_parallelism().map_or(1, usize::from),
            max_connections: 10_000,
            fd_reserve: 256,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            messages_per_second: 120,
            message_burst: 240,
            bytes_per_second: 256 * 1024,
            byte_burst: 512 * 1024,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            outbound_capacity: 256,
            write_timeout: Duration::from_secs(5),
            ticket_key: ticket_key.into(),
            max_ticket_lifetime: Duration::from_secs(24 * 60 * 60),
            socket_send_buffer: Some(64 * 1024),
            listen_backlog: 4096,
            close_linger: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(2),
            reconnect_grace: Duration::from_secs(30),
            zone: None,
            layout: None,
        }
    }
}

/// A good handshake, before its connection becomes the session's: what the `on_session` hook
/// is given.
#[derive(Debug, Clone)]
pub struct SessionStart {
    /// The player's session (the same across reconnects with the same player).
    pub session: Session,
    /// Whether the session was open already: a reconnect within the grace window, or a second
    /// connection taking it over.
    pub resumed: bool,
}

type Router<P> = dyn Fn(&Session, P) -> Result<(), Refusal> + Send + Sync;
type SessionHook = dyn Fn(&SessionStart) -> Result<(), String> + Send + Sync;
type ClosedHook = dyn Fn(&Session) + Send + Sync;

/// Counters a gateway keeps.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    /// Connections holding an admission now (see `admission`).
    pub(crate) active: Arc<AtomicUsize>,
    pub(crate) frames_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) peer_closed: AtomicU64,
    closed: [AtomicU64; CloseCode::ALL.len()],
}

impl Counters {
    pub(crate) fn record_close(&self, code: CloseCode) {
        if let Some(index) = CloseCode::ALL.iter().position(|known| *known == code) {
            // Relaxed: independent statistics counters.
            self.closed[index].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A snapshot of a gateway's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayMetrics {
    /// Connections accepted (including those refused as `ServerFull`).
    pub accepted: u64,
    /// Connections open now.
    pub active: usize,
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Bytes received in frames.
    pub bytes_in: u64,
    /// Bytes sent in frames.
    pub bytes_out: u64,
    /// Connections the client closed.
    pub peer_closed: u64,
    /// Connections the server closed, by reason (only reasons that happened).
    pub closed: Vec<(CloseCode, u64)>,
}

impl GatewayMetrics {
    pub(crate) fn read(counters: &Counters) -> GatewayMetrics {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GatewayMetrics {
            accepted: load(&counters.accepted),
            active: counters.active.load(Ordering::Relaxed),
            frames_in: load(&counters.frames_in),
            frames_out: load(&counters.frames_out),
            bytes_in: load(&counters.bytes_in),
            bytes_out: load(&counters.bytes_out),
            peer_closed: load(&counters.peer_closed),
            closed: CloseCode::ALL
                .iter()
                .zip(&counters.closed)
                .map(|(code, count)| (*code, load(count)))
                .filter(|(_, count)| *count > 0)
                .collect(),
        }
    }

    /// How many connections were closed with `code`.
    pub fn closed_with(&self, code: CloseCode) -> u64 {
        self.closed
            .iter()
            .find(|(known, _)| *known == code)
            .map_or(0, |(_, count)| *count)
    }
}

/// What every connection of one gateway shares.
pub(crate) struct Shared<P: Protocol> {
    pub(crate) config: GatewayConfig,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) router: Arc<Router<P>>,
    pub(crate) on_session: Arc<SessionHook>,
    pub(crate) on_session_closed: Arc<ClosedHook>,
    pub(crate) counters: Arc<Counters>,
    /// The adaptive limit on new sessions, if the game set one ([`GatewayBuilder::overload`]).
    pub(crate) limit: Option<crate::overload::AdaptiveLimit>,
    pub(crate) connections: DashMap<u64, Arc<outbound::OutboundQueue>>,
    pub(crate) next_connection: AtomicU64,
    /// Set once: the acceptors stop.
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
    pub(crate) arbiters: std::sync::OnceLock<Arc<Vec<actix_rt::Arbiter>>>,
    /// The gateway's hold on its event loops, until its shutdown (see `placement`).
    pub(crate) loops: std::sync::Mutex<Option<Arc<crate::placement::Loops>>>,
}

/// Accepts control kinds and the game's kinds; everything else is refused at the header.
fn known_kind<P: Protocol>(kind: MessageKind) -> bool {
    control::Control::knows(kind) || P::knows(kind)
}

/// Builds a [`Gateway`]: it takes its router at once, so a gateway without one cannot exist.
pub struct GatewayBuilder<P: Protocol> {
    config: GatewayConfig,
    sessions: Arc<Sessions>,
    router: Arc<Router<P>>,
    on_session: Arc<SessionHook>,
    on_session_closed: Arc<ClosedHook>,
    /// Bindings made for every session before the `on_session` hook runs.
    binders: Vec<Arc<Binder>>,
    /// Kinds the routes need running: checked by `start`.
    required: Vec<Required>,
    /// The kinds whose entities run on its event loops ([`GatewayBuilder::hosts`]).
    hosted: Vec<Host>,
    /// The adaptive limit on new sessions, if any.
    limit: Option<crate::overload::AdaptiveLimit>,
}

/// Binds a session at its handshake (see [`GatewayBuilder::to_entity`]).
type Binder = dyn Fn(&Session) + Send + Sync;

/// Hands a hosted kind the gateway's event loops once they run.
pub(crate) type Host = Box<dyn FnOnce(crate::placement::Opening) + Send>;

/// A kind a gateway's routes need: its name, whether it is served and running, and how an
/// overload limit follows its latency.
struct Required {
    kind: &'static str,
    state: Box<dyn Fn() -> Option<&'static str> + Send + Sync>,
    watch: Box<dyn Fn(&crate::overload::AdaptiveLimit) + Send + Sync>,
}

impl Required {
    fn of<E: Entity>(entities: &Entities<E>) -> Self {
        let watched = entities.clone();
        let entities = entities.clone();
        Required {
            kind: E::KIND,
            watch: Box::new(move |limit| {
                limit.watch(&watched);
            }),
            state: Box::new(move || {
                if !entities.is_served() {
                    Some("not served")
                } else if !entities.supervisor().is_running() {
                    Some("not running")
                } else {
                    None
                }
            }),
        }
    }
}

impl<P: Protocol> GatewayBuilder<P> {
    /// A gateway with `config`, registering connections in `sessions`, routing each validated
    /// message from a session with `router`: usually a [`Session::send`] to the entity the
    /// session is bound to for the message. A refusal is answered with a `Refused` frame; the
    /// connection stays open.
    pub fn new(
        config: GatewayConfig,
        sessions: Arc<Sessions>,
        router: impl Fn(&Session, P) -> Result<(), Refusal> + Send + Sync + 'static,
    ) -> Self {
        GatewayBuilder {
            config,
            sessions,
            router: Arc::new(router),
            on_session: Arc::new(|_| Ok(())),
            on_session_closed: Arc::new(|_| {}),
            binders: Vec::new(),
            required: Vec::new(),
            hosted: Vec::new(),
            limit: None,
        }
    }

    /// The whole wiring of a game whose client talks to one entity: every session is bound at
    /// its handshake to entity `key_of(session)` of `entities`' kind (its player, its table), and
    /// each message it sends goes there as `wrap(message)`, on the session's behalf (the handler
    /// sees [`EntityContext::session`](crate::EntityContext::session), and can
    /// [`reply`](crate::EntityContext::reply)). [`GatewayBuilder::start`] fails unless the kind
    /// is served and running. More bindings and checks go in [`GatewayBuilder::on_session`],
    /// which runs after this binding.
    pub fn to_entity<E: Entity>(
        config: GatewayConfig,
        sessions: Arc<Sessions>,
        entities: &Entities<E>,
        key_of: impl Fn(&Session) -> E::Key + Send + Sync + 'static,
        wrap: impl Fn(P) -> E::Message + Send + Sync + 'static,
    ) -> Self {
        let mut builder = GatewayBuilder::new(config, sessions, move |session, message| {
            session
                .send::<E>(wrap(message))
                .map_err(|refused| refused.reason)
        });
        let bound = entities.clone();
        builder.binders.push(Arc::new(move |session: &Session| {
            session.bind(&bound, key_of(session));
        }));
        builder.required.push(Required::of(entities));
        builder
    }

    /// Runs `entities`' kind on this gateway's event loops while it runs: each activation
    /// starts on the next loop in turn (a restart stays on its loop) instead of on the tree's
    /// runtime. A room whose players' connections share its loop then receives their inputs
    /// and writes its broadcasts with no hand-over between threads: on a server with one core
    /// (one loop), every message of a match stays on one thread. A handler that computes for
    /// long delays every connection of its loop. An entity running when the gateway shuts down
    /// keeps its loop running until it ends (its tree stops it, or it passivates); activations
    /// after the shutdown start on the tree's runtime. A kind hosted by two gateways takes the
    /// loops of the last one started.
    #[must_use]
    pub fn hosts<E: Entity>(mut self, entities: &Entities<E>) -> Self {
        let entities = entities.clone();
        self.hosted
            .push(Box::new(move |loops| entities.host_on(loops)));
        self
    }

    /// Makes [`GatewayBuilder::start`] fail unless `entities`' kind is served and running in a
    /// started tree: for the kinds a hand-written router sends to.
    pub fn requires<E: Entity>(mut self, entities: &Entities<E>) -> Self {
        self.required.push(Required::of(entities));
        self
    }

    /// Protects the server with an adaptive limit on new sessions (players logged in, counted by
    /// the gateway's [`Sessions`]), following the latency of every kind the routes need
    /// ([`GatewayBuilder::to_entity`], [`GatewayBuilder::requires`]) and of any other the game
    /// [watches](crate::overload::AdaptiveLimit::watch) through
    /// [`GatewayBuilder::overload_limit`]. A `Hello` that would open a session is
    /// [`Sheddable`](crate::overload::Priority): past the limit, or while a watched kind's
    /// latency is over the target, it is answered with `Refused` (code 105, the retry-after)
    /// and the connection closed as [`CloseCode::Overloaded`]. A resume (a player in play
    /// reconnecting) is always admitted. [`GatewayBuilder::start`] starts the limit on the tokio
    /// runtime it is called on.
    pub fn overload(mut self, config: crate::overload::OverloadConfig) -> Self {
        let sessions = self.sessions.clone();
        self.limit = Some(crate::overload::AdaptiveLimit::new(
            "gateway",
            config,
            move || sessions.len(),
        ));
        self
    }

    /// The limit [`GatewayBuilder::overload`] set, to watch more kinds with.
    pub fn overload_limit(&self) -> Option<&crate::overload::AdaptiveLimit> {
        self.limit.as_ref()
    }

    /// Sets the hook run on each good handshake, with whether the session is resumed, before the
    /// connection becomes the session's: bind the session to its entities here. An error closes
    /// the connection (`SessionRefused`, with the error's text) and leaves the session as it was:
    /// a live connection of the same player is not replaced, and a session the refused
    /// connection would have opened is not kept.
    pub fn on_session(
        mut self,
        hook: impl Fn(&SessionStart) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.on_session = Arc::new(hook);
        self
    }

    /// Sets the hook run once a session is closed for good: its player's connection ended and
    /// the player did not come back within the reconnect grace window. Release what the player
    /// held here (a seat, a place in a queue). It runs on a gateway event loop: send, do not wait.
    pub fn on_session_closed(mut self, hook: impl Fn(&Session) + Send + Sync + 'static) -> Self {
        self.on_session_closed = Arc::new(hook);
        self
    }

    /// Binds the listeners and starts the event loops.
    ///
    /// # Errors
    /// [`Error::Gateway`] when a listener cannot be bound or the event loops cannot start, or
    /// an overload limit is set off a tokio runtime (nothing could recompute it);
    /// [`Error::KindNotRunning`] when a kind the routes need is not served or not running.
    pub fn start(mut self) -> Result<Gateway<P>, Error> {
        for required in &self.required {
            if let Some(why) = (required.state)() {
                return Err(Error::KindNotRunning {
                    kind: required.kind,
                    why,
                });
            }
        }
        if let Some(limit) = &self.limit {
            let runtime = crate::concurrency::current().ok_or_else(|| Error::Gateway {
                reason: "an overload limit is recomputed on a tokio runtime; start the gateway \
                         on one"
                    .into(),
            })?;
            for required in &self.required {
                (required.watch)(limit);
            }
            limit.start_on(&runtime);
        }
        if !self.binders.is_empty() {
            let binders = std::mem::take(&mut self.binders);
            let hook = self.on_session.clone();
            self.on_session = Arc::new(move |start: &SessionStart| {
                for bind in &binders {
                    bind(&start.session);
                }
                hook(start)
            });
        }
        let router = self.router;
        let hosted = std::mem::take(&mut self.hosted);
        let backlog = i32::try_from(self.config.listen_backlog).unwrap_or(i32::MAX);
        let bind = |address: Option<SocketAddr>| -> Result<Option<StdListener>, Error> {
            address
                .map(|address| {
                    listen(address, backlog).map_err(|error| Error::Gateway {
                        reason: format!("bind {address}: {error}"),
                    })
                })
                .transpose()
        };
        let mut config = self.config;
        match admission::FdBudget::raise(config.fd_reserve) {
            Ok(budget) => {
                let cap = budget.cap(config.max_connections);
                if cap < config.max_connections {
                    tracing::warn!(
                        configured = config.max_connections,
                        max_connections = cap,
                        open_file_limit = budget.limit,
                        reserve = budget.reserve,
                        "the open-file limit allows fewer connections than configured; players \
                         beyond it are told the server is full (raise the hard limit: ulimit -Hn)"
                    );
                }
                config.max_connections = cap;
            }
            Err(error) => tracing::warn!(%error, "could not read the open-file limit"),
        }
        let tcp = bind(config.tcp)?;
        let websocket = bind(config.websocket)?;
        let tcp_addr = tcp.as_ref().and_then(|listener| listener.local_addr().ok());
        let websocket_addr = websocket
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());
        let shared = Arc::new(Shared {
            config,
            sessions: self.sessions,
            router,
            on_session: self.on_session,
            on_session_closed: self.on_session_closed,
            counters: Arc::default(),
            limit: self.limit,
            connections: DashMap::new(),
            next_connection: AtomicU64::new(0),
            stop: tokio::sync::watch::channel(false).0,
            arbiters: std::sync::OnceLock::new(),
            loops: std::sync::Mutex::new(None),
        });
        let thread_shared = shared.clone();
        let (ready, started) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("garrison-gateway".into())
            .spawn(move || connection::run_system(thread_shared, tcp, websocket, hosted, ready))
            .map_err(|error| Error::Gateway {
                reason: error.to_string(),
            })?;
        // Returns once the event loops accept connections, or with why they could not.
        match started.recv() {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                let _ = thread.join();
                return Err(Error::Gateway { reason });
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::Gateway {
                    reason: "the event loops' thread ended while starting".into(),
                });
            }
        }
        Ok(Gateway {
            shared,
            thread: Some(thread),
            tcp_addr,
            websocket_addr,
        })
    }
}

/// A non-blocking listener on `address` with room for `backlog` connections not yet accepted
/// (std's `TcpListener::bind` leaves 128), reusing the address as std does on Unix (not on
/// Windows, where it would let another process take the port).
fn listen(address: SocketAddr, backlog: i32) -> std::io::Result<StdListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    #[cfg(not(windows))]
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A running gateway.
pub struct Gateway<P: Protocol> {
    shared: Arc<Shared<P>>,
    thread: Option<JoinHandle<()>>,
    tcp_addr: Option<SocketAddr>,
    websocket_addr: Option<SocketAddr>,
}

impl<P: Protocol> std::fmt::Debug for Gateway<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("tcp", &self.tcp_addr)
            .field("websocket", &self.websocket_addr)
            .finish()
    }
}

impl<P: Protocol> Gateway<P> {
    /// How many connections it serves at once: the configured maximum, or less when the
    /// open-file limit allows less.
    pub fn max_connections(&self) -> usize {
        self.shared.config.max_connections
    }

    /// The TCP listener's address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The WebSocket listener's address.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.websocket_addr
    }

    /// Its limit on new sessions, if it has one ([`GatewayBuilder::overload`]).
    pub fn overload_limit(&self) -> Option<&crate::overload::AdaptiveLimit> {
        self.shared.limit.as_ref()
    }

    /// The counters now.
    pub fn metrics(&self) -> GatewayMetrics {
        GatewayMetrics::read(&self.shared.counters)
    }

    /// What the metrics registry reads at each scrape.
    #[cfg(feature = "metrics")]
    pub(crate) fn metric_sources(&self) -> (Arc<Counters>, Arc<Sessions>) {
        (self.shared.counters.clone(), self.shared.sessions.clone())
    }

    /// Stops gracefully: stops accepting, tells every client `ServerShutdown` after what is
    /// already queued for it, waits up to the drain timeout for the queues to empty, then stops
    /// the event loops. An entity placed on a loop ([`Placement::SessionLoop`], or of a kind
    /// the gateway hosts, [`GatewayBuilder::hosts`]) keeps its loop running until it ends (its
    /// tree stops it, or it passivates): the loops then stop without being waited for here.
    /// No new entity is placed on the loops from the start of the shutdown's last step.
    ///
    /// [`Placement::SessionLoop`]: crate::Placement::SessionLoop
    pub async fn shutdown(mut self) {
        self.shared.stop.send_replace(true);
        for connection in self.shared.connections.iter() {
            connection.value().close(CloseCode::ServerShutdown);
        }
        let deadline = tokio::time::Instant::now() + self.shared.config.drain_timeout;
        while !self.shared.connections.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stopped = connection::stop_system(&self.shared);
        if let Some(thread) = self.thread.take().filter(|_| stopped) {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Encodes a control message as a frame (for connections and tests).
pub(crate) fn control_frame<M: garrison_protocol::Message>(
    message: &M,
    meta: FrameMeta,
) -> Option<garrison_protocol::Frame> {
    garrison_protocol::encode_frame(message, meta).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection past a listener's backlog has its SYN dropped until the gateway accepts:
    /// with std's 128, a login storm of 300 would wait for the kernel's retries (1 s, 3 s, ...)
    /// or be reset; with the gateway's backlog every handshake completes before any accept.
    #[tokio::test]
    async fn the_listener_completes_a_login_storm_beyond_128_before_accepting_any() {
        let listener = listen("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
        let address = listener.local_addr().unwrap();
        let storm = (0..300).map(|_| {
            tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(address),
            )
        });
        let connected = futures_util::future::join_all(storm)
            .await
            .into_iter()
            .filter(|connected| matches!(connected, Ok(Ok(_))))
            .count();
        // The kernel caps every backlog at net.core.somaxconn (4,096 since Linux 5.4).
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|cap| cap.trim().parse::<usize>().ok())
            .unwrap_or(4096);
        assert_eq!(
            connected,
            300.min(cap + 1),
            "every handshake completed, none accepted yet (somaxconn {cap})"
        );
        drop(listener);
    }
}
