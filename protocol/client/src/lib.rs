//! A Rust client for Garrison servers, for a game's tools, bots and tests.
//!
//! [`Client::connect`] opens a session with a ticket over TCP or WebSocket and hands back a
//! client whose [`Client::next`] yields the server's pushes as the game's validated protocol
//! messages ([`Event::Message`]), [`Client::request`] sends a request and waits for the reply
//! matched by its `seq` (the protocol's reply flag: no counters, no guessing), and a dropped
//! connection is resumed with the same ticket ([`Event::Disconnected`], then [`Event::Reconnected`]).
//! It links the wire crate and tokio only, never the server.
//!
//! ```no_run
//! # use garrison_protocol::{messages, Message};
//! # #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, garrison_protocol::Schema)] pub struct Ping { pub n: u32 }
//! # #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, garrison_protocol::Schema)] pub struct Pong { pub n: u32 }
//! # messages! { pub enum Game { 1 => Ping(Ping), 2 => Pong(Pong) } }
//! use garrison_client::{Client, ClientConfig, Event};
//! use garrison_protocol::ticket;
//!
//! # async fn run() -> Result<(), garrison_client::ClientError> {
//! let ticket = ticket::mint(b"the server's key", 7, ticket::unix_now() + 60);
//! let config = ClientConfig::new("127.0.0.1:7000".parse().unwrap(), ticket);
//! let mut client = Client::<Game>::connect(config).await?;
//! let Game::Pong(pong) = client.request(&Ping { n: 1 }).await? else { unreachable!() };
//! assert_eq!(pong.n.to_native(), 1);
//! while let Some(event) = client.next().await {
//!     match event {
//!         Event::Message(message) => { /* a push */ }
//!         Event::Closed { reason, .. } => { println!("closed: {reason}"); break; }
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use garrison_protocol::{
    DecodeConfig, Frame, FrameCodec, FrameMeta, Message, Protocol,
    control::{Control, Hello, Ticket},
};
use tokio::{
    io::AsyncWriteExt,
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, oneshot},
};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message as WsMessage};
use tokio_util::codec::FramedRead;

/// How the client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Frames back to back on a TCP stream.
    Tcp,
    /// One frame per binary WebSocket message (`ws://address/`).
    WebSocket,
}

/// How a dropped connection is resumed: up to `attempts` reconnects with the same ticket, the
/// delay doubling from `first_delay` to at most `max_delay`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconnect {
    /// Reconnects tried before giving up (0: never resume).
    pub attempts: u32,
    /// Delay before the first.
    pub first_delay: Duration,
    /// Longest delay between two.
    pub max_delay: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            attempts: 8,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        }
    }
}

/// A client's settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server's address (its TCP or WebSocket listener, as `transport` says).
    pub address: SocketAddr,
    /// TCP or WebSocket.
    pub transport: Transport,
    /// The ticket that admits the player; resuming presents it again, so it must outlive the
    /// session (an expired ticket is rejected, and the client closes).
    pub ticket: Ticket,
    /// How long the handshake may take.
    pub handshake_timeout: Duration,
    /// How long [`Client::request`] waits for its reply.
    pub request_timeout: Duration,
    /// How a dropped connection is resumed.
    pub reconnect: Reconnect,
    /// Largest frame accepted from the server.
    pub max_frame_len: usize,
    /// Events held for [`Client::next`]; when full, the client stops reading the socket until
    /// the game reads (backpressure to the server, whose own queue then decides).
    pub inbox_capacity: usize,
    /// Frames waiting to be written; when full, [`Client::send`] and [`Client::request`] wait.
    pub outbox_capacity: usize,
    /// The layout hash of the game's protocols, sent in the `Hello`
    /// ([`garrison_protocol::schema::Document::layout_hash`]); 0 by default, which only a
    /// gateway that checks no layout accepts.
    pub layout: u64,
}

impl ClientConfig {
    /// TCP to `address` with `ticket`, and the defaults: 5 s handshake and request timeouts,
    /// [`Reconnect::default`], 64 KiB frames, 1,024 events and 256 outgoing frames queued.
    pub fn new(address: SocketAddr, ticket: Ticket) -> Self {
        ClientConfig {
            address,
            transport: Transport::Tcp,
            ticket,
            handshake_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            reconnect: Reconnect::default(),
            max_frame_len: garrison_protocol::DEFAULT_MAX_FRAME_LEN,
            inbox_capacity: 1_024,
            outbox_capacity: 256,
            layout: 0,
        }
    }

    /// The same, announcing the game's layout hash in the `Hello`.
    pub fn layout(mut self, layout: u64) -> Self {
        self.layout = layout;
        self
    }

    /// The same, over WebSocket.
    pub fn websocket(mut self) -> Self {
        self.transport = Transport::WebSocket;
        self
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// Where.
        address: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The connection failed after it was made.
    #[error("the connection failed: {0}")]
    Io(#[from] io::Error),
    /// The WebSocket upgrade or a WebSocket read failed.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// The server closed the connection, at the handshake or later.
    #[error("the server closed the connection (code {code}): {reason}")]
    Rejected {
        /// The close code (`docs/protocol.md`).
        code: u16,
        /// The server's reason.
        reason: String,
    },
    /// No `Welcome` within the handshake timeout.
    #[error("no Welcome within {0:?}")]
    HandshakeTimeout(Duration),
    /// A frame could not be encoded, or the server sent one that is not valid.
    #[error(transparent)]
    Protocol(#[from] garrison_protocol::Error),
    /// The server refused the request (or its handler failed on it).
    #[error("request {seq} refused (code {code}): {reason}")]
    Refused {
        /// The request's seq.
        seq: u32,
        /// The refusal code (`docs/protocol.md`, "Refusal codes").
        code: u16,
        /// The server's reason.
        reason: String,
        /// When to try again, if the server said (code 105, overloaded).
        retry_after: Option<Duration>,
    },
    /// No reply within the request timeout.
    #[error("no reply to request {seq} within {timeout:?}")]
    Timeout {
        /// The request's seq.
        seq: u32,
        /// The timeout.
        timeout: Duration,
    },
    /// The connection dropped while the request was in flight: the server may or may not have
    /// handled it.
    #[error("the connection dropped before request {seq} was answered (it may have been handled)")]
    Disconnected {
        /// The request's seq.
        seq: u32,
    },
    /// The client is closed (the server closed the session, or resuming failed).
    #[error("the client is closed")]
    Closed,
}

/// What the server did.
#[derive(Debug)]
pub enum Event<P> {
    /// A push: a message of the game's protocol, validated.
    Message(P),
    /// The connection dropped without a `Close`; the client is resuming it.
    Disconnected {
        /// What happened.
        reason: String,
    },
    /// The server refused a frame sent with [`Client::send`] (no request waits for it), by its
    /// `seq`: an entity too busy for it, a frame its router refused, a handler that failed on it.
    Refused {
        /// The refused frame's seq.
        seq: u32,
        /// The refusal code (`docs/protocol.md`, "Refusal codes").
        code: u16,
        /// The server's reason.
        reason: String,
        /// When to try again, if the server said (code 105, overloaded).
        retry_after: Option<Duration>,
    },
    /// The client reconnected with its ticket. `resumed`: the server still had the session
    /// (the reconnect came within its grace window), so its bindings and its game carry on;
    /// false: the server had closed it, and this is a new session.
    Reconnected {
        /// Whether the server resumed the session.
        resumed: bool,
    },
    /// The server moved the player's session to another node of its fleet: connect to
    /// `address` with the same ticket and resume there. The connection closes right after
    /// ([`Event::Closed`] with code 34, `moved`), and this client does not reconnect by itself.
    Redirected {
        /// The node's gateway, `host:port`.
        address: String,
        /// The node's id.
        node: String,
    },
    /// The session ended: the server closed it (`code`), or resuming failed (`None`). The
    /// last event.
    Closed {
        /// The server's close code, when it sent one.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Result<Frame, ClientError>>>>>;

/// Bytes a client moved, over all its connections, frames' length prefixes included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes of frames received.
    pub bytes_in: u64,
    /// Bytes of frames sent.
    pub bytes_out: u64,
}

#[derive(Default)]
struct Counters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A connected client speaking protocol `P` (the game's `messages!` enum). Dropping it closes
/// the connection.
pub struct Client<P: Protocol> {
    session: u64,
    commands: mpsc::Sender<Bytes>,
    events: mpsc::Receiver<Event<P>>,
    pending: Pending,
    seq: AtomicU32,
    request_timeout: Duration,
    max_frame_len: usize,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl<P: Protocol> Drop for Client<P> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<P: Protocol> std::fmt::Debug for Client<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Client<P> {
    /// Connects, sends `Hello` with the ticket and waits for `Welcome`.
    ///
    /// # Errors
    /// [`ClientError::Connect`], [`ClientError::WebSocket`], [`ClientError::Rejected`] (a bad
    /// or expired ticket, a full server: the server's `Close`), [`ClientError::Refused`] (an
    /// overloaded server shedding new sessions: code 105, with when to retry),
    /// [`ClientError::HandshakeTimeout`].
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let counters = Arc::new(Counters::default());
        let (link, welcomed) = Link::open(&config, &counters).await?;
        let (commands, outbox) = mpsc::channel(config.outbox_capacity.max(1));
        let (inbox, events) = mpsc::channel(config.inbox_capacity.max(1));
        let pending = Pending::default();
        let task = tokio::spawn(run::<P>(
            config.clone(),
            link,
            outbox,
            inbox,
            pending.clone(),
            counters.clone(),
        ));
        Ok(Client {
            session: welcomed.session,
            commands,
            events,
            pending,
            seq: AtomicU32::new(1),
            request_timeout: config.request_timeout,
            max_frame_len: config.max_frame_len,
            counters,
            task,
        })
    }

    /// Bytes moved so far, over every connection of this client.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            bytes_in: self.counters.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.counters.bytes_out.load(Ordering::Relaxed),
        }
    }

    /// The session id the server gave (the same across resumes).
    pub fn session(&self) -> u64 {
        self.session
    }

    fn next_seq(&self) -> u32 {
        loop {
            // 0 is the handshake's.
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            if seq != 0 {
                return seq;
            }
        }
    }

    fn encode<M: Message>(&self, message: &M, meta: FrameMeta) -> Result<Bytes, ClientError> {
        // The per-thread encoder: its scratch arena is reused, so a send allocates only its frame.
        let frame = garrison_protocol::encode_frame(message, meta)?;
        let length = frame.wire().len();
        if length > self.max_frame_len {
            return Err(garrison_protocol::Error::Oversize {
                length: length as u64,
                max: self.max_frame_len,
            }
            .into());
        }
        Ok(frame.wire().clone())
    }

    /// As [`Client::send`], with a W3C trace context in the frame, so the server's spans for it
    /// join the caller's trace.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub async fn send_traced<M: Message>(
        &self,
        message: &M,
        trace: Option<garrison_protocol::TraceContext>,
    ) -> Result<u32, ClientError> {
        let seq = self.next_seq();
        let meta = FrameMeta {
            seq,
            trace,
            reply: false,
        };
        let wire = self.encode(message, meta)?;
        self.commands
            .send(wire)
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(seq)
    }

    /// Sends `message` without waiting for an answer; returns the seq it was stamped with. Waits
    /// while the outbox is full; a message sent while the client resumes goes out on the new
    /// connection.
    ///
    /// # Errors
    /// [`ClientError::Protocol`] when it cannot be encoded, [`ClientError::Closed`].
    pub async fn send<M: Message>(&self, message: &M) -> Result<u32, ClientError> {
        self.send_traced(message, None).await
    }

    /// Sends `message` as a request and waits for the server's reply to it, validated as `P`.
    /// Keep reading [`Client::next`] meanwhile (from another task, or in a `select!`) when the
    /// server pushes a lot: pushes wait in the bounded inbox, and while it is full the client
    /// reads nothing, replies included, until the request times out. A reply that comes after
    /// the timeout arrives as an [`Event::Message`].
    ///
    /// # Errors
    /// [`ClientError::Refused`] (the server refused it, or its handler failed on it),
    /// [`ClientError::Timeout`], [`ClientError::Disconnected`] (it was in flight when the
    /// connection dropped), [`ClientError::Protocol`] (a reply that is not a valid `P`),
    /// [`ClientError::Closed`].
    pub async fn request<M: Message>(&self, message: &M) -> Result<P, ClientError> {
        let seq = self.next_seq();
        let wire = self.encode(message, FrameMeta::seq(seq))?;
        let (answer, answered) = oneshot::channel();
        lock(&self.pending).insert(seq, answer);
        // The timeout covers the wait for room in the outbox too: a client whose game stopped
        // reading events (the inbox full, the connection task waiting for it) gets its error.
        let asked = tokio::time::timeout(self.request_timeout, async {
            if self.commands.send(wire).await.is_err() {
                return Err(ClientError::Closed);
            }
            match answered.await {
                Ok(Ok(frame)) => Ok(P::validate(frame)?),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(ClientError::Closed),
            }
        })
        .await;
        asked.unwrap_or_else(|_| {
            lock(&self.pending).remove(&seq);
            Err(ClientError::Timeout {
                seq,
                timeout: self.request_timeout,
            })
        })
    }

    /// The next event; `None` once the session has ended and every event was read.
    pub async fn next(&mut self) -> Option<Event<P>> {
        self.events.recv().await
    }

    /// The next push of the game's protocol, skipping the other events; `None` once closed.
    pub async fn next_message(&mut self) -> Option<P> {
        loop {
            match self.events.recv().await? {
                Event::Message(message) => return Some(message),
                Event::Closed { .. } => return None,
                Event::Disconnected { .. }
                | Event::Reconnected { .. }
                | Event::Refused { .. }
                | Event::Redirected { .. } => {}
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// What the server's `Welcome` said.
struct Welcomed {
    session: u64,
    resumed: bool,
}

/// One connection to the server.
struct Link {
    transport: Stream,
    counters: Arc<Counters>,
}

/// The byte stream under a link.
enum Stream {
    Tcp {
        read: FramedRead<OwnedReadHalf, FrameCodec>,
        write: OwnedWriteHalf,
    },
    WebSocket(Box<WebSocketStream<TcpStream>>),
}

impl Link {
    /// Connects and completes the handshake; returns the link and what the `Welcome` said.
    async fn open(
        config: &ClientConfig,
        counters: &Arc<Counters>,
    ) -> Result<(Link, Welcomed), ClientError> {
        let address = config.address;
        let stream = TcpStream::connect(address)
            .await
            .map_err(|source| ClientError::Connect { address, source })?;
        // Game traffic is many small frames: no Nagle delay.
        stream.set_nodelay(true)?;
        let decode = DecodeConfig::default().with_max_frame_len(config.max_frame_len);
        let stream = match config.transport {
            Transport::Tcp => {
                let (read, write) = stream.into_split();
                Stream::Tcp {
                    read: FramedRead::new(read, FrameCodec::new(decode)),
                    write,
                }
            }
            Transport::WebSocket => {
                let (socket, _) =
                    tokio_tungstenite::client_async(format!("ws://{address}/"), stream)
                        .await
                        .map_err(|error| ClientError::WebSocket(error.to_string()))?;
                Stream::WebSocket(Box::new(socket))
            }
        };
        let mut link = Link {
            transport: stream,
            counters: counters.clone(),
        };
        let mut wire = BytesMut::new();
        FrameCodec::new(decode).encode_message(
            &Hello {
                ticket: config.ticket,
                layout: config.layout,
            },
            FrameMeta::seq(0),
            &mut wire,
        )?;
        link.send(wire.freeze()).await?;
        let welcome = tokio::time::timeout(config.handshake_timeout, async {
            loop {
                let frame = match link.recv(&decode).await {
                    Some(frame) => frame?,
                    None => {
                        return Err(ClientError::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server ended the connection during the handshake",
                        )));
                    }
                };
                match Control::validate(frame) {
                    Ok(Control::Welcome(welcome)) => {
                        return Ok(Welcomed {
                            session: welcome.session.to_native(),
                            resumed: welcome.resumed,
                        });
                    }
                    Ok(Control::Close(close)) => {
                        return Err(ClientError::Rejected {
                            code: close.code.to_native(),
                            reason: close.reason.to_string(),
                        });
                    }
                    // The Hello refused (an overloaded server shedding new sessions, with
                    // when to retry); its Close follows.
                    Ok(Control::Refused(refused)) => {
                        return Err(ClientError::Refused {
                            seq: refused.seq.to_native(),
                            code: refused.code.to_native(),
                            reason: refused.reason.to_string(),
                            retry_after: match refused.retry_after_ms.to_native() {
                                0 => None,
                                ms => Some(Duration::from_millis(u64::from(ms))),
                            },
                        });
                    }
                    // Nothing else is sent before the Welcome; skip what is not for us.
                    _ => continue,
                }
            }
        })
        .await
        .map_err(|_| ClientError::HandshakeTimeout(config.handshake_timeout))??;
        Ok((link, welcome))
    }

    async fn send(&mut self, wire: Bytes) -> Result<(), ClientError> {
        self.counters
            .bytes_out
            .fetch_add(wire.len() as u64, Ordering::Relaxed);
        match &mut self.transport {
            Stream::Tcp { write, .. } => Ok(write.write_all(&wire).await?),
            Stream::WebSocket(socket) => socket
                .send(WsMessage::Binary(wire))
                .await
                .map_err(|error| ClientError::WebSocket(error.to_string())),
        }
    }

    /// The next frame; `None` when the server ended the connection.
    async fn recv(&mut self, decode: &DecodeConfig) -> Option<Result<Frame, ClientError>> {
        let frame = self.read(decode).await;
        if let Some(Ok(frame)) = &frame {
            self.counters
                .bytes_in
                .fetch_add(frame.wire().len() as u64, Ordering::Relaxed);
        }
        frame
    }

    async fn read(&mut self, decode: &DecodeConfig) -> Option<Result<Frame, ClientError>> {
        match &mut self.transport {
            Stream::Tcp { read, .. } => read
                .next()
                .await
                .map(|frame| frame.map_err(ClientError::from)),
            Stream::WebSocket(socket) => loop {
                match socket.next().await? {
                    Ok(WsMessage::Binary(data)) => {
                        return Some(Frame::decode_exact(data, decode).map_err(ClientError::from));
                    }
                    Ok(WsMessage::Close(_)) => return None,
                    Ok(WsMessage::Text(_)) => {
                        return Some(Err(ClientError::WebSocket(
                            "the server sent a text message".to_owned(),
                        )));
                    }
                    // Pings are answered by tungstenite itself.
                    Ok(_) => continue,
                    Err(error) => return Some(Err(ClientError::WebSocket(error.to_string()))),
                }
            },
        }
    }

    async fn close(&mut self) {
        match &mut self.transport {
            Stream::Tcp { write, .. } => {
                let _ = write.shutdown().await;
            }
            Stream::WebSocket(socket) => {
                let _ = WebSocketStream::close(&mut **socket, None).await;
            }
        }
    }
}

/// How one connection ended.
enum Ended {
    /// The game dropped the client.
    Client,
    /// The server closed the session, or broke the protocol: final.
    Closed { code: Option<u16>, reason: String },
    /// The transport dropped: resume.
    Lost(String),
}

/// The connection task: reads, writes, resumes.
async fn run<P: Protocol>(
    config: ClientConfig,
    mut link: Link,
    mut outbox: mpsc::Receiver<Bytes>,
    inbox: mpsc::Sender<Event<P>>,
    pending: Pending,
    counters: Arc<Counters>,
) {
    let decode = DecodeConfig::default().with_max_frame_len(config.max_frame_len);
    loop {
        let ended = serve(&mut link, &decode, &mut outbox, &inbox, &pending).await;
        // What was in flight on this connection gets no reply on it.
        for (seq, answer) in lock(&pending).drain() {
            let _ = answer.send(Err(ClientError::Disconnected { seq }));
        }
        match ended {
            Ended::Client => {
                link.close().await;
                return;
            }
            Ended::Closed { code, reason } => {
                link.close().await;
                let _ = inbox.send(Event::Closed { code, reason }).await;
                return;
            }
            Ended::Lost(reason) => {
                if inbox.send(Event::Disconnected { reason }).await.is_err() {
                    return;
                }
                match resume(&config, &counters).await {
                    Ok((resumed_link, resumed)) => {
                        link = resumed_link;
                        if inbox.send(Event::Reconnected { resumed }).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        let code = match &error {
                            ClientError::Rejected { code, .. } => Some(*code),
                            _ => None,
                        };
                        let reason = format!("could not resume: {error}");
                        let _ = inbox.send(Event::Closed { code, reason }).await;
                        return;
                    }
                }
            }
        }
    }
}

/// Reconnects with the same ticket, backing off between attempts; says whether the server
/// resumed the session.
async fn resume(
    config: &ClientConfig,
    counters: &Arc<Counters>,
) -> Result<(Link, bool), ClientError> {
    let policy = config.reconnect;
    let mut delay = policy.first_delay;
    let mut last = ClientError::Closed;
    for _ in 0..policy.attempts {
        tokio::time::sleep(delay).await;
        match Link::open(config, counters).await {
            Ok((link, welcome)) => return Ok((link, welcome.resumed)),
            // The server refused the ticket or the session: retrying cannot help.
            Err(error @ ClientError::Rejected { .. }) => return Err(error),
            Err(error) => last = error,
        }
        delay = (delay * 2).min(policy.max_delay);
    }
    Err(last)
}

async fn serve<P: Protocol>(
    link: &mut Link,
    decode: &DecodeConfig,
    outbox: &mut mpsc::Receiver<Bytes>,
    inbox: &mpsc::Sender<Event<P>>,
    pending: &Pending,
) -> Ended {
    loop {
        tokio::select! {
            frame = link.recv(decode) => {
                let frame = match frame {
                    None => return Ended::Lost("the server ended the connection".to_owned()),
                    Some(Err(ClientError::Protocol(error))) => {
                        return Ended::Closed {
                            code: None,
                            reason: format!("the server sent an invalid frame: {error}"),
                        };
                    }
                    Some(Err(error)) => return Ended::Lost(error.to_string()),
                    Some(Ok(frame)) => frame,
                };
                if frame.header().reply {
                    let unanswered = match answer(pending, frame) {
                        None => continue,
                        Some(Ok(refused)) => Event::Refused {
                            seq: refused.seq,
                            code: refused.code,
                            reason: refused.reason,
                            retry_after: refused.retry_after,
                        },
                        // A reply to a frame sent without waiting: a message like any other.
                        Some(Err(frame)) => match P::validate(frame) {
                            Ok(message) => Event::Message(message),
                            Err(error) => {
                                return Ended::Closed {
                                    code: None,
                                    reason: format!("the server sent an invalid frame: {error}"),
                                };
                            }
                        },
                    };
                    if inbox.send(unanswered).await.is_err() {
                        return Ended::Client;
                    }
                    continue;
                }
                if Control::knows(frame.kind()) {
                    match Control::validate(frame) {
                        Ok(Control::Close(close)) => {
                            return Ended::Closed {
                                code: Some(close.code.to_native()),
                                reason: close.reason.to_string(),
                            };
                        }
                        Ok(Control::Redirect(redirect)) => {
                            let redirected = Event::Redirected {
                                address: redirect.address.to_string(),
                                node: redirect.node.to_string(),
                            };
                            if inbox.send(redirected).await.is_err() {
                                return Ended::Client;
                            }
                        }
                        _ => {}
                    }
                    continue;
                }
                match P::validate(frame) {
                    Ok(message) => {
                        if inbox.send(Event::Message(message)).await.is_err() {
                            return Ended::Client;
                        }
                    }
                    Err(error) => {
                        return Ended::Closed {
                            code: None,
                            reason: format!("the server sent an invalid frame: {error}"),
                        };
                    }
                }
            }
            wire = outbox.recv() => {
                let Some(wire) = wire else {
                    return Ended::Client;
                };
                if let Err(error) = link.send(wire).await {
                    return Ended::Lost(error.to_string());
                }
            }
        }
    }
}

/// A `Refused` read from the wire.
struct RefusedFrame {
    seq: u32,
    code: u16,
    reason: String,
    retry_after: Option<Duration>,
}

/// Hands a reply to the request waiting for it. A reply no request waits for (one to a frame
/// sent with `send`) comes back: a refusal as its parts, anything else as the frame.
fn answer(pending: &Pending, frame: Frame) -> Option<Result<RefusedFrame, Frame>> {
    let seq = frame.header().seq;
    let refused = match Control::validate(frame.clone()) {
        Ok(Control::Refused(refused)) => Some(RefusedFrame {
            seq,
            code: refused.code.to_native(),
            reason: refused.reason.to_string(),
            retry_after: match refused.retry_after_ms.to_native() {
                0 => None,
                ms => Some(Duration::from_millis(u64::from(ms))),
            },
        }),
        _ => None,
    };
    let Some(waiting) = lock(pending).remove(&seq) else {
        return Some(refused.ok_or(frame));
    };
    let _ = waiting.send(match refused {
        Some(RefusedFrame {
            seq,
            code,
            reason,
            retry_after,
        }) => Err(ClientError::Refused {
            seq,
            code,
            reason,
            retry_after,
        }),
        None => Ok(frame),
    });
    None
}
