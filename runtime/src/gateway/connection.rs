//! One connection: an actix actor on one arbiter (reading, handshake, limits, routing, timers)
//! and a writer task beside it draining the connection's bounded outbound queue.

use std::{
    io,
    net::TcpListener as StdListener,
    pin::Pin,
    sync::{Arc, PoisonError, atomic::Ordering},
    time::Duration,
};

use actix::{
    Actor, ActorContext, AsyncContext, Context, Handler, Message as ActixMessage, StreamHandler,
};
use actix_rt::Arbiter;
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt, future};
use garrison_protocol::{
    DecodeConfig, Error as ProtocolError, FIXED_HEADER_LEN, Frame, FrameCodec, FrameMeta, Protocol,
    control::{Close, Hello, Refused, Welcome},
};
use tokio::net::tcp::OwnedWriteHalf;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, protocol::WebSocketConfig};
use tokio_util::codec::{Decoder, FramedRead};

use super::{
    CloseCode, SessionStart, Shared,
    admission::{self, Admission, Spare},
    control_frame, known_kind,
    limits::TokenBucket,
    outbound::{DirectWrite, Next, OutboundQueue},
    ticket,
};
use crate::{
    Refusal, Session, SessionId, clock,
    origin::{self, Origin, Outbound},
    overload::Priority,
    placement,
    telemetry::{self, Sampling},
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    WebSocket,
}

/// What the reading side yields.
enum Inbound {
    Frame(Frame),
    /// The client sent something that cannot be a frame: close with this code and text.
    Invalid(CloseCode, String),
    Ended,
}

fn close_code(error: &ProtocolError) -> CloseCode {
    match error {
        ProtocolError::Oversize { .. } => CloseCode::FrameTooLarge,
        ProtocolError::UnsupportedVersion { .. } => CloseCode::UnsupportedVersion,
        _ => CloseCode::ProtocolError,
    }
}

/// The TCP decoder: frames, then, after the first bytes that cannot be one, nothing but
/// discarded input. The connection keeps reading until the client closes its side (or the close
/// linger runs out), so the kernel never resets the socket with the `Close` still in flight.
struct InboundCodec {
    frames: FrameCodec,
    failed: bool,
    /// Frames decoded so far: a connection that has sent this many reads in chunks.
    decoded: u32,
}

/// Frames after which a connection counts as active and reads in [`READ_CHUNK`]s.
const ACTIVE_AFTER: u32 = 16;

/// The read buffer an active connection refills with. Frames are split off it without a copy
/// and share its allocation until they are handled; when the rest of the buffer is too small,
/// a new one is allocated. A buffer sized for one frame would cost two allocations per frame (a
/// new buffer, and its promotion to shared); 8 KiB holds ~230 input frames, so a burst costs one
/// allocation pair per chunk, and a client read as fast as it sends reuses the same buffer. An
/// idle connection keeps its 512-byte first buffer (measured: 9.6 KB of server memory per idle
/// connection).
const READ_CHUNK: usize = 8 * 1024;

type Decode = fn(&mut FrameCodec, &mut BytesMut) -> Result<Option<Frame>, ProtocolError>;

impl InboundCodec {
    /// One decoding step with `decode` (mid-stream or at its end): a frame, or the first error
    /// as `Invalid` and from then on nothing but discarded bytes.
    fn step(&mut self, src: &mut BytesMut, decode: Decode) -> Result<Option<Inbound>, io::Error> {
        if self.failed {
            src.clear();
            return Ok(None);
        }
        if self.decoded >= ACTIVE_AFTER && src.capacity() - src.len() < FIXED_HEADER_LEN {
            src.reserve(READ_CHUNK);
        }
        match decode(&mut self.frames, src) {
            Ok(frame) => {
                self.decoded = self.decoded.saturating_add(u32::from(frame.is_some()));
                Ok(frame.map(Inbound::Frame))
            }
            Err(ProtocolError::Io(error)) => Err(error),
            Err(error) => {
                self.failed = true;
                src.clear();
                Ok(Some(Inbound::Invalid(
                    close_code(&error),
                    error.to_string(),
                )))
            }
        }
    }
}

impl Decoder for InboundCodec {
    type Item = Inbound;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, io::Error> {
        self.step(src, Decoder::decode)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, io::Error> {
        self.step(src, Decoder::decode_eof)
    }
}

/// Runs the gateway's actix system on this thread until `stop_system`, telling `ready` once
/// its event loops run (or why they could not start).
pub(super) fn run_system<P: Protocol>(
    shared: Arc<Shared<P>>,
    tcp: Option<StdListener>,
    websocket: Option<StdListener>,
    hosted: Vec<super::Host>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    // Every runtime is built here, where a failure (out of descriptors, say) is an error to
    // report rather than a panic inside actix.
    let build = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtimes: Result<Vec<_>, _> = (0..=shared.config.event_loops.max(1))
        .map(|_| build())
        .collect();
    let mut runtimes = match runtimes {
        Ok(runtimes) => runtimes,
        Err(error) => {
            let _ = ready.send(Err(format!("the event loops could not start: {error}")));
            return;
        }
    };
    let system_runtime = runtimes.remove(0);
    let runner = actix_rt::System::with_tokio_rt(move || system_runtime);
    runner.block_on(async {
        let event_loops: Vec<tokio::runtime::Handle> = runtimes
            .iter()
            .map(|runtime| runtime.handle().clone())
            .collect();
        let loops: Arc<Vec<Arbiter>> = Arc::new(
            runtimes
                .into_iter()
                .map(|runtime| Arbiter::with_tokio_rt(move || runtime))
                .collect(),
        );
        // What keeps the loops running: the gateway until its shutdown, and every entity
        // placed on a loop while it runs (`Placement::SessionLoop`, a kind the gateway hosts).
        let handles: Vec<_> = loops.iter().map(Arbiter::handle).collect();
        let system = actix_rt::System::current();
        let keep_running = placement::Loops::new(event_loops.clone(), move || {
            for event_loop in &handles {
                event_loop.stop();
            }
            system.stop();
        });
        for host in hosted {
            host(keep_running.opening());
        }
        // Queued before any connection can reach a loop.
        for (event_loop, runtime) in loops.iter().zip(event_loops) {
            let loops = keep_running.opening();
            event_loop.spawn_fn(move || placement::enter(runtime, loops));
        }
        for (listener, transport) in [(tcp, Transport::Tcp), (websocket, Transport::WebSocket)] {
            if let Some(listener) = listener {
                actix_rt::spawn(accept_loop(
                    shared.clone(),
                    listener,
                    transport,
                    loops.clone(),
                ));
            }
        }
        // Keep the arbiters owned by the system's lifetime.
        let _ = shared.arbiters.set(loops);
        *shared.loops.lock().unwrap_or_else(PoisonError::into_inner) = Some(keep_running);
        let _ = ready.send(Ok(()));
    });
    let _ = runner.run();
}

/// Lets the event loops stop: at once, or when the last entity placed on one has ended.
/// Returns whether they stop now.
pub(super) fn stop_system<P: Protocol>(shared: &Shared<P>) -> bool {
    let keep_running = shared
        .loops
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(keep_running) = &keep_running {
        keep_running.close();
    }
    // The last reference stops them as it drops.
    keep_running.is_none_or(|keep_running| Arc::into_inner(keep_running).is_some())
}

async fn accept_loop<P: Protocol>(
    shared: Arc<Shared<P>>,
    listener: StdListener,
    transport: Transport,
    loops: Arc<Vec<Arbiter>>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut stop = shared.stop.subscribe();
    let mut spare = Spare::new();
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            // A stopping gateway accepts nothing more, even with a connection waiting.
            biased;
            _ = stop.wait_for(|stopping| *stopping) => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) if admission::out_of_descriptors(&error) => {
                refuse_without_descriptors(&shared, &listener, &mut spare).await;
                continue;
            }
            Err(_) => {
                // Out of buffers or an aborted handshake: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Relaxed: statistics.
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        if let Some(size) = shared.config.socket_send_buffer {
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(size);
        }
        let admission =
            Admission::try_admit(&shared.counters.active, shared.config.max_connections);
        // A tokio socket belongs to the reactor it was registered with: hand the event loop a
        // std socket and let it register there.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let event_loop = &loops[next % loops.len()];
        next = next.wrapping_add(1);
        let shared = shared.clone();
        event_loop.spawn(async move { serve(shared, stream, transport, admission).await });
    }
}

/// The process is out of descriptors with a connection waiting: free the spare one, accept the
/// connection, tell it the server is full, close it, and take the spare back. Without a spare,
/// back off instead of spinning on the error.
async fn refuse_without_descriptors<P: Protocol>(
    shared: &Shared<P>,
    listener: &tokio::net::TcpListener,
    spare: &mut Spare,
) {
    if !spare.release() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        spare.restore();
        return;
    }
    if let Ok(Ok((stream, _))) =
        tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
    {
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        shared.counters.record_close(CloseCode::ServerFull);
        let reason = "the server is out of connection descriptors; try again later";
        if let Some(close) = control_frame(
            &Close {
                code: CloseCode::ServerFull.code(),
                reason: reason.to_owned(),
            },
            FrameMeta::seq(0),
        ) {
            // Best effort, without waiting: one small frame fits any empty send buffer.
            let _ = stream.try_write(close.wire());
        }
        let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
        // Read what already arrived, so closing does not reset the socket over unread input.
        let mut discard = [0u8; 1024];
        while matches!(stream.try_read(&mut discard), Ok(read) if read > 0) {}
    }
    spare.restore();
}

fn decode_config<P: Protocol>(shared: &Shared<P>) -> DecodeConfig {
    DecodeConfig {
        max_frame_len: shared.config.max_frame_len,
        known_kind: known_kind::<P>,
    }
}

async fn serve<P: Protocol>(
    shared: Arc<Shared<P>>,
    stream: std::net::TcpStream,
    transport: Transport,
    admission: Option<Admission>,
) {
    let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
        return;
    };
    let config = decode_config(&shared);
    match transport {
        Transport::Tcp => {
            let (read, write) = stream.into_split();
            let codec = InboundCodec {
                frames: FrameCodec::new(config),
                failed: false,
                decoded: 0,
            };
            // A small first read buffer: it grows for large frames only (bounded by the limit).
            let reader = FramedRead::with_capacity(read, codec, 512)
                .map(|item| item.unwrap_or(Inbound::Ended));
            let socket = Arc::new(write);
            let direct: Arc<dyn DirectWrite> = socket.clone();
            start(
                shared,
                Box::pin(reader),
                TcpWire(socket),
                Some(direct),
                admission,
            );
        }
        Transport::WebSocket => {
            let mut ws_config = WebSocketConfig::default();
            ws_config.max_message_size = Some(shared.config.max_frame_len);
            ws_config.max_frame_size = Some(shared.config.max_frame_len);
            let handshake = tokio::time::timeout(
                shared.config.handshake_timeout,
                tokio_tungstenite::accept_async_with_config(stream, Some(ws_config)),
            );
            let Ok(Ok(socket)) = handshake.await else {
                shared.counters.peer_closed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let (sink, stream) = socket.split();
            let reader = stream.filter_map(move |message| {
                future::ready(match message {
                    // One WebSocket message carries exactly one frame.
                    Ok(WsMessage::Binary(data)) => Some(match Frame::decode_exact(data, &config) {
                        Ok(frame) => Inbound::Frame(frame),
                        Err(ProtocolError::Io(_)) => Inbound::Ended,
                        Err(error) => Inbound::Invalid(close_code(&error), error.to_string()),
                    }),
                    Ok(WsMessage::Text(_)) => Some(Inbound::Invalid(
                        CloseCode::ProtocolError,
                        "text messages are not frames: send each frame as one binary message"
                            .to_owned(),
                    )),
                    Ok(WsMessage::Close(_)) => Some(Inbound::Ended),
                    Ok(_) => None,
                    Err(tungstenite::Error::Capacity(error)) => Some(Inbound::Invalid(
                        CloseCode::FrameTooLarge,
                        error.to_string(),
                    )),
                    Err(_) => Some(Inbound::Ended),
                })
            });
            let writer = sink.with(|wire: Bytes| {
                future::ready(Ok::<_, tungstenite::Error>(WsMessage::Binary(wire)))
            });
            start(
                shared,
                Box::pin(reader),
                SinkWire(Box::pin(writer)),
                None,
                admission,
            );
        }
    }
}

/// How a connection's writer puts bytes on the wire.
trait Wire {
    /// Writes every buffer of `batch`, in order (and drains it).
    fn write_all(&mut self, batch: &mut Vec<Bytes>) -> impl Future<Output = io::Result<()>>;
    /// Ends the sending side: a TCP FIN, a WebSocket close frame.
    fn finish(&mut self) -> impl Future<Output = io::Result<()>>;
}

/// TCP: vectored writes of the frames' own bytes (no copy into a write buffer), one syscall per
/// batch when the socket takes it all.
struct TcpWire(Arc<OwnedWriteHalf>);

impl Wire for TcpWire {
    async fn write_all(&mut self, batch: &mut Vec<Bytes>) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> =
            batch.iter().map(|wire| io::IoSlice::new(wire)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            self.0.writable().await?;
            match self.0.try_write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => io::IoSlice::advance_slices(&mut rest, written),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
        drop(slices);
        batch.clear();
        Ok(())
    }

    async fn finish(&mut self) -> io::Result<()> {
        socket2::SockRef::from(self.0.as_ref().as_ref()).shutdown(std::net::Shutdown::Write)
    }
}

/// WebSocket: one binary message per frame through tungstenite's sink.
struct SinkWire<S>(S);

impl<S: Sink<Bytes> + Unpin> Wire for SinkWire<S> {
    async fn write_all(&mut self, batch: &mut Vec<Bytes>) -> io::Result<()> {
        let broken = |_| io::Error::from(io::ErrorKind::BrokenPipe);
        for wire in batch.drain(..) {
            self.0.feed(wire).await.map_err(broken)?;
        }
        self.0.flush().await.map_err(broken)
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.0
            .close()
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

fn start<P, W>(
    shared: Arc<Shared<P>>,
    reader: Pin<Box<dyn Stream<Item = Inbound>>>,
    writer: W,
    direct: Option<Arc<dyn DirectWrite>>,
    admission: Option<Admission>,
) where
    P: Protocol,
    W: Wire + 'static,
{
    let queue = Arc::new(OutboundQueue::new(
        shared.config.outbound_capacity,
        shared.counters.clone(),
    ));
    if let Some(direct) = direct {
        queue.write_directly_to(direct);
    }
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    shared.connections.insert(id, queue.clone());
    // A connection the accept loop took as the gateway began to stop may be inserted after
    // `shutdown` told every connection: it checks the flag itself (set before that pass, read
    // after this insert, so one of the two sees the other) and is told to come back later.
    if *shared.stop.borrow() {
        queue.close(CloseCode::ServerShutdown);
    } else if admission.is_none() {
        queue.close_because(
            CloseCode::ServerFull,
            format!(
                "the server is at its limit of {} connections; try again later",
                shared.config.max_connections
            ),
        );
    }
    let now = clock::now_millis();
    let connection = Connection::<P> {
        shared: shared.clone(),
        outbound: queue.clone(),
        id,
        _admission: admission,
        session: None,
        messages: TokenBucket::new(
            shared.config.messages_per_second,
            shared.config.message_burst,
        ),
        bytes: TokenBucket::new(shared.config.bytes_per_second, shared.config.byte_burst),
        last_activity_ms: now,
        writer_done: false,
        peer_done: false,
    };
    let address = Connection::create(move |context| {
        context.add_stream(reader);
        connection
    });
    actix_rt::spawn(async move {
        let close_written = write_loop(writer, &queue, &shared).await;
        // The socket goes when the reader is done too; no push may write to it meanwhile.
        queue.end_direct();
        address.do_send(WriterDone { close_written });
    });
}

/// Drains the outbound queue into the socket; a write that stalls past the write timeout (or an
/// urgent stop) ends the connection as a slow consumer. Returns whether it wrote a `Close`.
async fn write_loop<P: Protocol, W: Wire>(
    mut wire: W,
    queue: &OutboundQueue,
    shared: &Shared<P>,
) -> bool {
    let mut batch = Vec::with_capacity(16);
    let limit = shared.config.write_timeout;
    loop {
        match queue.next(&mut batch).await {
            Next::Frames => {
                let frames = batch.len() as u64;
                let bytes: usize = batch.iter().map(Bytes::len).sum();
                let write = async { wire.write_all(&mut batch).await.map_err(drop) };
                let written = tokio::select! {
                    written = tokio::time::timeout(limit, write) => written,
                    () = queue.urgent() => {
                        if let Some(code) = queue.closing() {
                            shared.counters.record_close(code);
                        }
                        return false;
                    }
                };
                match written {
                    Ok(Ok(())) => {
                        shared
                            .counters
                            .frames_out
                            .fetch_add(frames, Ordering::Relaxed);
                        shared
                            .counters
                            .bytes_out
                            .fetch_add(bytes as u64, Ordering::Relaxed);
                    }
                    Ok(Err(())) => return false,
                    Err(_) => {
                        queue.close_because(
                            CloseCode::SlowConsumer,
                            format!("a write to the client stalled for more than {limit:?}"),
                        );
                        shared.counters.record_close(CloseCode::SlowConsumer);
                        return false;
                    }
                }
            }
            Next::Close(code) => {
                shared.counters.record_close(code);
                // Even a slow consumer may have room now; the write timeout bounds the attempt.
                let Some(close) = control_frame(
                    &Close {
                        code: code.code(),
                        reason: queue.close_reason(),
                    },
                    FrameMeta::seq(0),
                ) else {
                    return false;
                };
                let sent = tokio::time::timeout(limit, async {
                    let mut last = vec![close.wire().clone()];
                    wire.write_all(&mut last).await.is_ok() && wire.finish().await.is_ok()
                })
                .await;
                return sent.unwrap_or(false);
            }
            Next::Abort => return false,
        }
    }
}

#[derive(ActixMessage)]
#[rtype(result = "()")]
struct WriterDone {
    close_written: bool,
}

struct Connection<P: Protocol> {
    shared: Arc<Shared<P>>,
    outbound: Arc<OutboundQueue>,
    id: u64,
    /// Its place under the connection limit (`None`: refused as `ServerFull`), held until the
    /// connection is dropped, which gives it back.
    _admission: Option<Admission>,
    /// The player's session, once the handshake succeeded.
    session: Option<Session>,
    messages: TokenBucket,
    bytes: TokenBucket,
    last_activity_ms: u64,
    /// The writer has finished (sent its `Close`, or given up).
    writer_done: bool,
    /// The client's side has ended.
    peer_done: bool,
}

impl<P: Protocol> Connection<P> {
    /// Closes with `code`, the `Close` saying `reason`: the writer sends what is queued, then the
    /// `Close`, then ends its side. Reading goes on meanwhile (frames are discarded) until the
    /// client ends its side or the close linger runs out: closing a TCP socket with unread input
    /// makes the kernel reset it, and the reset would destroy the `Close` in flight.
    fn close(&self, code: CloseCode, reason: impl Into<String>) {
        self.outbound.close_because(code, reason.into());
    }

    /// The client's side ended. A connection that is closing stops once its writer is done;
    /// any other stops now (its writer is aborted in `stopped`).
    fn ended(&mut self, context: &mut Context<Self>) {
        self.peer_done = true;
        if self.outbound.closing().is_none() || self.writer_done {
            context.stop();
        }
    }

    fn reply<M: garrison_protocol::Message>(&self, message: &M, seq: u32) {
        // Welcome answers Hello and Refused answers the refused frame: both are replies.
        if let Some(frame) = control_frame(message, FrameMeta::reply_to(seq)) {
            // A reply that does not fit starts a slow-consumer close by the queue's policy.
            let _ = self.outbound.push(frame);
        }
    }

    fn handshake(&mut self, frame: Frame) {
        let seq = frame.header().seq;
        let hello_kind = <Hello as garrison_protocol::Message>::KIND;
        let hello = match frame.access::<Hello>() {
            Ok(hello) => hello,
            Err(error) if frame.kind() == hello_kind => {
                return self.close(CloseCode::ProtocolError, error.to_string());
            }
            Err(_) => {
                return self.close(
                    CloseCode::HandshakeExpected,
                    format!(
                        "the first frame must be a Hello (kind {hello_kind}), not kind {}",
                        frame.kind()
                    ),
                );
            }
        };
        let player = match ticket::verify(
            &self.shared.config.ticket_key,
            &hello.ticket,
            ticket::unix_now(),
            self.shared.config.max_ticket_lifetime.as_secs(),
        ) {
            Ok(player) => player,
            Err(error @ ticket::TicketError::Expired { .. }) => {
                return self.close(CloseCode::ExpiredTicket, error.to_string());
            }
            Err(error) => return self.close(CloseCode::BadTicket, error.to_string()),
        };
        if let Some(expected) = self.shared.config.layout {
            let sent = hello.layout.to_native();
            if sent != expected {
                return self.close(
                    CloseCode::LayoutMismatch,
                    format!(
                        "the client was built against message layout {sent:016x}, the server's is \
                         {expected:016x}: rebuild the client from the server's schema"
                    ),
                );
            }
        }
        let id = SessionId(player);
        let sessions = &self.shared.sessions;
        if let Some(limit) = &self.shared.limit {
            // A player in play reconnecting is never shed; a new session is, first.
            let priority = if sessions.contains(id) {
                Priority::Critical
            } else {
                Priority::Sheddable
            };
            if let Err(refusal) = limit.admit(priority, "new sessions") {
                tracing::info!(game.session.id = player, %refusal, "session shed");
                self.refuse(seq, &refusal);
                return self.close(CloseCode::Overloaded, refusal.to_string());
            }
        }
        // The hook binds the session before any connection is attached to it, so a refusal
        // replaces no live connection and leaves no session of its own behind.
        let (session, opened) = sessions.open(id);
        let start = SessionStart {
            session,
            resumed: !opened,
        };
        if let Err(reason) = (self.shared.on_session)(&start) {
            tracing::info!(game.session.id = player, %reason, "session refused");
            if opened {
                sessions.discard_unattached(id);
            }
            return self.close(CloseCode::SessionRefused, reason);
        }
        let SessionStart { session, resumed } = start;
        // Atomic takeover: an older connection of this player is told it was replaced. The
        // Welcome is queued under the same lock, first: once attached, the session's entities
        // may push at once (a resumed player's board), and nothing may reach the client before
        // its Welcome; nor may a client that has its Welcome find its session detached.
        let outbound: Arc<dyn Outbound> = self.outbound.clone();
        sessions.attach_after(id, outbound, || {
            self.reply(
                &Welcome {
                    session: player,
                    resumed,
                },
                seq,
            );
        });
        self.session = Some(session);
    }

    fn route(&self, session: &Session, frame: Frame) {
        let seq = frame.header().seq;
        let client = frame.header().trace;
        // Head sampling: a client's decision is followed; a frame without one is a new trace,
        // kept at the configured ratio. An unsampled frame creates no span, nor does anything
        // it causes.
        let sampling = Sampling::decide(None, false, client.as_ref());
        let span = if sampling.is_kept() {
            tracing::info_span!(
                "garrison.gateway.frame",
                game.session.id = session.player(),
                game.event.type = P::name_of(frame.kind()).unwrap_or("unknown"),
                frame.seq = seq,
                frame.bytes = frame.wire().len(),
                game.world.zone = self.shared.config.zone.as_deref(),
                garrison.sampled = client.is_none().then_some(true),
            )
        } else {
            tracing::Span::none()
        };
        if let Some(trace) = &client {
            // The client's span is the parent: the server's work joins the client's trace.
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(
                &span,
                telemetry::remote_parent(trace),
            );
        }
        let _entered = span.enter();
        let message = match P::validate(frame) {
            Ok(message) => message,
            Err(error) => {
                tracing::info!(%error, "invalid frame; closing");
                return self.close(CloseCode::ProtocolError, error.to_string());
            }
        };
        // The sends the router makes remember this frame, so a failure to handle it is answered.
        let origin = Origin {
            connection: self.outbound.clone(),
            seq,
            session: session.id(),
        };
        let routed = origin::with_origin(origin, || {
            telemetry::with_sampling(sampling, || (self.shared.router)(session, message))
        });
        if let Err(refused) = routed {
            self.refuse(seq, &refused);
        }
    }

    /// Answers frame `seq` with a `Refused` saying why (and when to retry, if the refusal says).
    fn refuse(&self, seq: u32, refusal: &Refusal) {
        let code = refusal.code().code();
        // At least 1 when given: 0 on the wire means "no advice".
        let retry_after_ms = refusal.retry_after().map_or(0, |after| {
            u32::try_from(after.as_millis()).unwrap_or(u32::MAX).max(1)
        });
        crate::stats::refusal_sent(code);
        self.reply(
            &Refused {
                seq,
                code,
                reason: refusal.to_string(),
                retry_after_ms,
            },
            seq,
        );
    }
}

impl<P: Protocol> Actor for Connection<P> {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Context<Self>) {
        let handshake = self.shared.config.handshake_timeout;
        context.run_later(handshake, move |connection, _| {
            if connection.session.is_none() {
                connection.close(
                    CloseCode::HandshakeTimeout,
                    format!("no Hello arrived within {handshake:?}"),
                );
            }
        });
        let idle = self.shared.config.idle_timeout;
        let period = (idle / 4).max(Duration::from_millis(10));
        context.run_interval(period, move |connection, _| {
            let quiet = clock::now_millis().saturating_sub(connection.last_activity_ms);
            if quiet >= idle.as_millis() as u64 {
                connection.close(
                    CloseCode::IdleTimeout,
                    format!("no frame arrived for {idle:?}"),
                );
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(session) = self.session.take() {
            let outbound: Arc<dyn Outbound> = self.outbound.clone();
            let grace = self.shared.config.reconnect_grace;
            if let Some(generation) =
                self.shared
                    .sessions
                    .detach_with_grace(session.id(), &outbound, grace)
            {
                // The player may come back within the grace window and resume; otherwise the
                // session (and its bindings) is closed, so departed players leave nothing behind.
                let sessions = self.shared.sessions.clone();
                let closed = self.shared.on_session_closed.clone();
                actix_rt::spawn(async move {
                    tokio::time::sleep(grace).await;
                    if let Some(session) = sessions.close_if_detached(session.id(), generation) {
                        closed(&session);
                    }
                });
            }
        }
        if self.outbound.closing().is_none() {
            // The client went away: nothing more to write.
            self.shared
                .counters
                .peer_closed
                .fetch_add(1, Ordering::Relaxed);
            self.outbound.abort();
        }
        self.shared.connections.remove(&self.id);
        // The admission, if any, is given back when the actor is dropped.
    }
}

impl<P: Protocol> StreamHandler<Inbound> for Connection<P> {
    fn handle(&mut self, item: Inbound, context: &mut Context<Self>) {
        let frame = match item {
            Inbound::Frame(frame) => frame,
            Inbound::Invalid(code, reason) => return self.close(code, reason),
            Inbound::Ended => return self.ended(context),
        };
        match self.outbound.closing() {
            None => {}
            // Closed by the server for a reason of its own (a move to another node, a
            // shutdown): what the client sent before it heard is still routed (a moved session
            // keeps its bindings for it), so no input in flight is lost.
            Some(code) if code.routes_in_flight() && self.session.is_some() => {}
            // Closing because of the client: drain and discard until the writer has sent the
            // `Close`.
            Some(_) => return,
        }
        let length = frame.wire().len();
        self.shared
            .counters
            .frames_in
            .fetch_add(1, Ordering::Relaxed);
        self.shared
            .counters
            .bytes_in
            .fetch_add(length as u64, Ordering::Relaxed);
        self.last_activity_ms = clock::now_millis();
        let config = &self.shared.config;
        if !self.messages.take(1.0) {
            let reason = format!(
                "more than {} messages per second (burst {})",
                config.messages_per_second, config.message_burst
            );
            return self.close(CloseCode::RateLimited, reason);
        }
        if !self.bytes.take(length as f64) {
            let reason = format!(
                "more than {} bytes per second (burst {})",
                config.bytes_per_second, config.byte_burst
            );
            return self.close(CloseCode::RateLimited, reason);
        }
        match &self.session {
            None => self.handshake(frame),
            Some(session) => self.route(session, frame),
        }
    }

    fn finished(&mut self, context: &mut Context<Self>) {
        self.ended(context);
    }
}

impl<P: Protocol> Handler<WriterDone> for Connection<P> {
    type Result = ();

    fn handle(&mut self, done: WriterDone, context: &mut Context<Self>) {
        self.writer_done = true;
        if self.peer_done || !done.close_written {
            return context.stop();
        }
        // The `Close` is on its way: keep reading until the client closes its side, for at most
        // the linger.
        context.run_later(self.shared.config.close_linger, |_, context| {
            context.stop();
        });
    }
}
