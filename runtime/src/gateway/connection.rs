//! One connection: an actix actor on one arbiter (reading, handshake, limits, routing, timers)
//! and a writer task beside it draining the connection's bounded outbound queue.

use std::{
    net::TcpListener as StdListener,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
};

use actix::{
    Actor, ActorContext, AsyncContext, Context, Handler, Message as ActixMessage, StreamHandler,
};
use actix_rt::Arbiter;
use futures_util::{Sink, SinkExt, Stream, StreamExt, future};
use garrison_protocol::{
    DecodeConfig, Error as ProtocolError, Frame, FrameCodec, Protocol,
    control::{Close, Hello, Refused, Welcome},
};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, protocol::WebSocketConfig};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::{
    CloseCode, SessionInfo, Shared, control_frame, known_kind,
    limits::TokenBucket,
    outbound::{Next, OutboundQueue},
    refusal, ticket,
};
use crate::{
    Refusal, SessionId, clock,
    session::{self, Origin, Outbound},
    telemetry,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    WebSocket,
}

/// What the reading side yields.
enum Inbound {
    Frame(Frame),
    Invalid(CloseCode),
    Ended,
}

fn close_code(error: &ProtocolError) -> Option<CloseCode> {
    match error {
        ProtocolError::Io(_) => None,
        ProtocolError::Oversize { .. } => Some(CloseCode::FrameTooLarge),
        ProtocolError::UnsupportedVersion { .. } => Some(CloseCode::UnsupportedVersion),
        _ => Some(CloseCode::ProtocolError),
    }
}

/// Runs the gateway's actix system on this thread until `stop_system`.
pub(super) fn run_system<P: Protocol>(
    shared: Arc<Shared<P>>,
    tcp: Option<StdListener>,
    websocket: Option<StdListener>,
) {
    let runner = actix_rt::System::new();
    runner.block_on(async {
        let _ = shared.system.set(actix_rt::System::current());
        let loops: Arc<Vec<Arbiter>> = Arc::new(
            (0..shared.config.event_loops.max(1))
                .map(|_| Arbiter::new())
                .collect(),
        );
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
    });
    let _ = runner.run();
}

pub(super) fn stop_system<P: Protocol>(shared: &Shared<P>) {
    if let Some(arbiters) = shared.arbiters.get() {
        for arbiter in arbiters.iter() {
            arbiter.stop();
        }
    }
    if let Some(system) = shared.system.get() {
        system.stop();
    }
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
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopping| *stopping) => return,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors or buffers: back off instead of spinning on the error.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        // Relaxed: statistics and a soft admission limit.
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let admitted =
            shared.counters.active.fetch_add(1, Ordering::AcqRel) < shared.config.max_connections;
        if !admitted {
            shared.counters.active.fetch_sub(1, Ordering::AcqRel);
        }
        // A tokio socket belongs to the reactor it was registered with: hand the event loop a
        // std socket and let it register there.
        let Ok(stream) = stream.into_std() else {
            if admitted {
                shared.counters.active.fetch_sub(1, Ordering::AcqRel);
            }
            continue;
        };
        let event_loop = &loops[next % loops.len()];
        next = next.wrapping_add(1);
        let shared = shared.clone();
        event_loop.spawn(async move { serve(shared, stream, transport, admitted).await });
    }
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
    admitted: bool,
) {
    let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
        if admitted {
            shared.counters.active.fetch_sub(1, Ordering::AcqRel);
        }
        return;
    };
    let config = decode_config(&shared);
    match transport {
        Transport::Tcp => {
            let (read, write) = stream.into_split();
            // A small first read buffer: it grows for large frames only (bounded by the limit).
            let reader = FramedRead::with_capacity(read, FrameCodec::new(config), 512).map(
                |item| match item {
                    Ok(frame) => Inbound::Frame(frame),
                    Err(error) => close_code(&error).map_or(Inbound::Ended, Inbound::Invalid),
                },
            );
            let writer = FramedWrite::new(write, FrameCodec::default());
            start(shared, Box::pin(reader), writer, admitted);
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
                if admitted {
                    shared.counters.active.fetch_sub(1, Ordering::AcqRel);
                }
                shared.counters.peer_closed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let (sink, stream) = socket.split();
            let reader = stream.filter_map(move |message| {
                future::ready(match message {
                    // One WebSocket message carries exactly one frame.
                    Ok(WsMessage::Binary(data)) => Some(match Frame::decode_exact(data, &config) {
                        Ok(frame) => Inbound::Frame(frame),
                        Err(error) => close_code(&error).map_or(Inbound::Ended, Inbound::Invalid),
                    }),
                    Ok(WsMessage::Text(_)) => Some(Inbound::Invalid(CloseCode::ProtocolError)),
                    Ok(WsMessage::Close(_)) => Some(Inbound::Ended),
                    Ok(_) => None,
                    Err(tungstenite::Error::Capacity(_)) => {
                        Some(Inbound::Invalid(CloseCode::FrameTooLarge))
                    }
                    Err(_) => Some(Inbound::Ended),
                })
            });
            let writer = sink.with(|frame: Frame| {
                future::ready(Ok::<_, tungstenite::Error>(WsMessage::Binary(
                    frame.wire().clone(),
                )))
            });
            start(shared, Box::pin(reader), Box::pin(writer), admitted);
        }
    }
}

fn start<P, W>(
    shared: Arc<Shared<P>>,
    reader: Pin<Box<dyn Stream<Item = Inbound>>>,
    writer: W,
    admitted: bool,
) where
    P: Protocol,
    W: Sink<Frame> + Unpin + 'static,
{
    let queue = Arc::new(OutboundQueue::new(shared.config.outbound_capacity));
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    shared.connections.insert(id, queue.clone());
    let now = clock::now_millis();
    let connection = Connection::<P> {
        shared: shared.clone(),
        outbound: queue.clone(),
        id,
        admitted,
        session: None,
        messages: TokenBucket::new(
            shared.config.messages_per_second,
            shared.config.message_burst,
        ),
        bytes: TokenBucket::new(shared.config.bytes_per_second, shared.config.byte_burst),
        last_activity_ms: now,
    };
    let address = Connection::create(move |context| {
        context.add_stream(reader);
        connection
    });
    if !admitted {
        queue.close(CloseCode::ServerFull);
    }
    actix_rt::spawn(async move {
        write_loop(writer, &queue, &shared).await;
        address.do_send(WriterDone);
    });
}

/// Drains the outbound queue into the socket; a write that stalls past the write timeout (or an
/// urgent stop) ends the connection as a slow consumer.
async fn write_loop<P: Protocol, W: Sink<Frame> + Unpin>(
    mut sink: W,
    queue: &OutboundQueue,
    shared: &Shared<P>,
) {
    let mut batch = Vec::with_capacity(16);
    let limit = shared.config.write_timeout;
    loop {
        match queue.next(&mut batch).await {
            Next::Frames => {
                let frames = batch.len() as u64;
                let bytes: usize = batch.iter().map(|frame| frame.wire().len()).sum();
                let write = async {
                    for frame in batch.drain(..) {
                        sink.feed(frame).await.map_err(drop)?;
                    }
                    sink.flush().await.map_err(drop)
                };
                let written = tokio::select! {
                    written = tokio::time::timeout(limit, write) => written,
                    () = queue.urgent() => {
                        if let Some(code) = queue.closing() {
                            shared.counters.record_close(code);
                        }
                        return;
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
                    Ok(Err(())) => return,
                    Err(_) => {
                        queue.close(CloseCode::SlowConsumer);
                        shared.counters.record_close(CloseCode::SlowConsumer);
                        return;
                    }
                }
            }
            Next::Close(code) => {
                shared.counters.record_close(code);
                // Even a slow consumer may have room now; the write timeout bounds the attempt.
                if let Some(close) = control_frame(
                    &Close {
                        code: code.code(),
                        reason: code.label().to_owned(),
                    },
                    0,
                ) {
                    let _ = tokio::time::timeout(limit, async {
                        let _ = sink.send(close).await;
                        let _ = sink.close().await;
                    })
                    .await;
                }
                return;
            }
            Next::Abort => return,
        }
    }
}

#[derive(ActixMessage)]
#[rtype(result = "()")]
struct WriterDone;

struct Connection<P: Protocol> {
    shared: Arc<Shared<P>>,
    outbound: Arc<OutboundQueue>,
    id: u64,
    admitted: bool,
    session: Option<SessionInfo>,
    messages: TokenBucket,
    bytes: TokenBucket,
    last_activity_ms: u64,
}

impl<P: Protocol> Connection<P> {
    /// Closes with `code`: the writer sends what is queued, then the `Close`, then shuts the
    /// socket. Reading goes on meanwhile (frames are discarded): closing a TCP socket with
    /// unread input makes the kernel reset it, and the reset would destroy the `Close` in flight.
    /// The actor stops when the writer is done.
    fn close(&mut self, code: CloseCode, _: &mut Context<Self>) {
        self.outbound.close(code);
    }

    /// The client's side ended. A connection that is closing waits for its writer; any other
    /// stops now (its writer is aborted in `stopped`).
    fn ended(&mut self, context: &mut Context<Self>) {
        if self.outbound.closing().is_none() {
            context.stop();
        }
    }

    fn reply<M: garrison_protocol::Message>(&self, message: &M, seq: u32) {
        if let Some(frame) = control_frame(message, seq) {
            // A reply that does not fit starts a slow-consumer close by the queue's policy.
            let _ = self.outbound.push(frame);
        }
    }

    fn handshake(&mut self, frame: Frame, context: &mut Context<Self>) {
        let seq = frame.header().seq;
        let Ok(hello) = frame.access::<Hello>() else {
            let code = if frame.kind() == <Hello as garrison_protocol::Message>::KIND {
                CloseCode::ProtocolError
            } else {
                CloseCode::HandshakeExpected
            };
            return self.close(code, context);
        };
        let player = match ticket::verify(
            &self.shared.config.ticket_key,
            &hello.ticket,
            ticket::unix_now(),
        ) {
            Ok(player) => player,
            Err(ticket::TicketError::BadSignature) => {
                return self.close(CloseCode::BadTicket, context);
            }
            Err(ticket::TicketError::Expired) => {
                return self.close(CloseCode::ExpiredTicket, context);
            }
        };
        let info = SessionInfo {
            session: SessionId(player),
            player,
        };
        let resumed = self.shared.sessions.contains(info.session);
        let outbound: Arc<dyn Outbound> = self.outbound.clone();
        // Atomic takeover: an older connection of this player is told it was replaced.
        self.shared.sessions.attach(info.session, outbound);
        if let Err(reason) = (self.shared.on_session)(&info, resumed) {
            tracing::info!(game.session.id = player, %reason, "session refused");
            return self.close(CloseCode::SessionRefused, context);
        }
        self.session = Some(info);
        self.reply(
            &Welcome {
                session: player,
                resumed,
            },
            seq,
        );
    }

    fn route(&mut self, info: SessionInfo, frame: Frame, context: &mut Context<Self>) {
        let seq = frame.header().seq;
        let client = frame.header().trace;
        // Head sampling: a client's decision is followed; a frame without one is a new trace,
        // kept at the configured ratio. An unsampled frame creates no span, nor does anything
        // it causes.
        let traced = client.map_or_else(telemetry::sample_root, |trace| trace.flags & 1 == 1);
        let span = if traced {
            tracing::info_span!(
                "garrison.gateway.frame",
                game.session.id = info.session.0,
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
                return self.close(CloseCode::ProtocolError, context);
            }
        };
        // The sends the router makes remember this frame, so a failure to handle it is answered.
        let origin = Origin {
            connection: self.outbound.clone(),
            seq,
        };
        let routed = session::with_origin(origin, || {
            telemetry::run_sampled_out(!traced, || (self.shared.router)(&info, message))
        });
        if let Err(refused) = routed {
            let code = match &refused {
                Refusal::Session(_) => refusal::NOT_BOUND,
                Refusal::MailboxFull => refusal::BUSY,
                Refusal::KindNotRunning { .. } => refusal::UNAVAILABLE,
            };
            let reason = refused.to_string();
            self.reply(&Refused { seq, code, reason }, seq);
        }
    }
}

impl<P: Protocol> Actor for Connection<P> {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Context<Self>) {
        context.run_later(
            self.shared.config.handshake_timeout,
            |connection, context| {
                if connection.session.is_none() {
                    connection.close(CloseCode::HandshakeTimeout, context);
                }
            },
        );
        let idle = self.shared.config.idle_timeout;
        let period = (idle / 4).max(std::time::Duration::from_millis(10));
        context.run_interval(period, move |connection, context| {
            let quiet = clock::now_millis().saturating_sub(connection.last_activity_ms);
            if quiet >= idle.as_millis() as u64 {
                connection.close(CloseCode::IdleTimeout, context);
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(info) = self.session {
            let outbound: Arc<dyn Outbound> = self.outbound.clone();
            if let Some(generation) = self.shared.sessions.detach(info.session, &outbound) {
                // The player may come back within the grace window and resume; otherwise the
                // session (and its bindings) is closed, so departed players leave nothing behind.
                let sessions = self.shared.sessions.clone();
                let grace = self.shared.config.reconnect_grace;
                actix_rt::spawn(async move {
                    tokio::time::sleep(grace).await;
                    sessions.close_if_detached(info.session, generation);
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
        if self.admitted {
            self.shared.counters.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<P: Protocol> StreamHandler<Inbound> for Connection<P> {
    fn handle(&mut self, item: Inbound, context: &mut Context<Self>) {
        let frame = match item {
            Inbound::Frame(frame) => frame,
            Inbound::Invalid(code) => return self.close(code, context),
            Inbound::Ended => return self.ended(context),
        };
        if self.outbound.closing().is_some() {
            // Closing: drain and discard until the writer has sent the `Close`.
            return;
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
        if !self.messages.take(1.0) || !self.bytes.take(length as f64) {
            return self.close(CloseCode::RateLimited, context);
        }
        match self.session {
            None => self.handshake(frame, context),
            Some(info) => self.route(info, frame, context),
        }
    }

    fn finished(&mut self, context: &mut Context<Self>) {
        self.ended(context);
    }
}

impl<P: Protocol> Handler<WriterDone> for Connection<P> {
    type Result = ();

    fn handle(&mut self, _: WriterDone, context: &mut Context<Self>) {
        context.stop();
    }
}
