//! The gateway against hostile clients, over TCP and WebSocket alike: each hostile behaviour gets
//! its exact close reason (or refusal), while a well-behaved client on the same gateway keeps
//! exchanging frames with no loss. Run them all with `cargo test -p garrison-tests hostile`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use garrison_protocol::{
    DecodeConfig, Frame, FrameCodec, FrameMeta, Message, Protocol, Snapshot,
    control::{self, Control, Hello, Ticket},
};
use garrison_runtime::{
    Activation, Entities, Entity, EntityContext, HandlerError, KindConfig, SessionId, Sessions,
    gateway::{
        CloseCode, Gateway, GatewayBuilder, GatewayConfig, RefusalCode, SessionStart, ticket,
    },
};
use garrison_supervisor::{ChildSpec, SupervisorBuilder, SupervisorRef};
use garrison_tests::{
    probe::eventually,
    wire::{Chat, Input, TestMessage},
};
use rkyv::{Archive, Deserialize, Serialize};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message as WsMessage};
use tokio_util::codec::Framed;

pub const KEY: &[u8] = b"test-ticket-key";
const LIMIT: Duration = Duration::from_secs(10);

#[derive(Archive, Serialize, Deserialize, Default)]
struct Seen(u32);

impl Snapshot for Seen {
    const SCHEMA: &'static str = "test.pilot";
    const VERSION: u16 = 1;
}

/// Each player's entity echoes its inputs back to its session, answers "ask", and passes
/// "relay" on to pilot 0 as an "ask" (which pilot 0 answers to the client).
struct Pilot {
    sessions: Arc<Sessions>,
    pilots: Option<Entities<Pilot>>,
    /// The inputs pilots handled, by pilot.
    inputs: Arc<std::sync::Mutex<std::collections::HashMap<u64, u32>>>,
}

impl Entity for Pilot {
    const KIND: &'static str = "pilot";
    type Key = u64;
    type State = Seen;
    type Message = TestMessage;

    async fn activate(&self, _: &u64, recovered: Activation<Seen>) -> Result<Seen, HandlerError> {
        Ok(recovered.unwrap_or_default())
    }

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        message: TestMessage,
        seen: &mut Seen,
    ) -> Result<(), HandlerError> {
        seen.0 += 1;
        if let TestMessage::Chat(chat) = &message {
            assert_ne!(chat.text.as_str(), "crash", "told to crash");
            if let ("relay", Some(pilots)) = (chat.text.as_str(), &self.pilots) {
                let ask = Chat {
                    from: "relay".into(),
                    text: "ask".into(),
                };
                let frame = garrison_protocol::encode_frame(&ask, FrameMeta::seq(0))?;
                let ask = TestMessage::validate(frame)?;
                context
                    .forward(pilots, &0, ask)
                    .map_err(|refused| refused.reason)?;
            }
            if chat.text.as_str() == "ask" {
                let answer = Chat {
                    from: "pilot".into(),
                    text: format!("answer {}", seen.0),
                };
                context.reply(&answer)?;
            }
        }
        if let TestMessage::Input(input) = &message {
            *self
                .inputs
                .lock()
                .unwrap()
                .entry(*context.key())
                .or_default() += 1;
            let echo = Input {
                entity: *context.key(),
                x: input.x.to_native(),
                y: 0,
                seq: input.seq.to_native(),
                tick: seen.0,
            };
            let frame =
                garrison_protocol::encode_frame(&echo, FrameMeta::seq(input.seq.to_native()))?;
            // A full or detached outbound queue is the connection's business, not the pilot's.
            let _ = self.sessions.push(SessionId(*context.key()), frame);
        }
        Ok(())
    }
}

pub struct World {
    pub gateway: Gateway<TestMessage>,
    pub sessions: Arc<Sessions>,
    pub tree: SupervisorRef,
    /// Players whose sessions closed for good, in order (`on_session_closed`).
    pub closed: Arc<std::sync::Mutex<Vec<u64>>>,
    /// The inputs each pilot handled.
    pub inputs: Arc<std::sync::Mutex<std::collections::HashMap<u64, u32>>>,
}

pub async fn world(config: impl FnOnce(&mut GatewayConfig)) -> World {
    world_with_hook(config, |_| Ok(())).await
}

/// A world whose session hook runs `admit` after binding the player to its pilot; an error
/// refuses the session.
pub async fn world_with_hook(
    config: impl FnOnce(&mut GatewayConfig),
    admit: impl Fn(&SessionStart) -> Result<(), String> + Send + Sync + 'static,
) -> World {
    let sessions = Arc::new(Sessions::new());
    let pilots = Entities::declare(KindConfig::default()).unwrap();
    let inputs: Arc<std::sync::Mutex<_>> = Arc::default();
    pilots
        .serve(Pilot {
            sessions: sessions.clone(),
            pilots: Some(pilots.clone()),
            inputs: inputs.clone(),
        })
        .unwrap();
    let tree = SupervisorBuilder::new("game")
        .child(ChildSpec::new("pilots", pilots.start()))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut settings = GatewayConfig::new(KEY);
    settings.tcp = Some("127.0.0.1:0".parse().unwrap());
    settings.websocket = Some("127.0.0.1:0".parse().unwrap());
    settings.event_loops = 2;
    settings.handshake_timeout = Duration::from_millis(300);
    settings.idle_timeout = Duration::from_secs(5);
    settings.messages_per_second = 200;
    settings.message_burst = 300;
    settings.outbound_capacity = 32;
    settings.write_timeout = Duration::from_millis(500);
    config(&mut settings);
    let closed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let closing = closed.clone();
    let gateway =
        GatewayBuilder::<TestMessage>::new(settings, sessions.clone(), |session, message| {
            // Inputs name the pilot they steer; it must be the session's own.
            let target = match &message {
                TestMessage::Input(input) => input.entity.to_native(),
                _ => session.player(),
            };
            session
                .send_to::<Pilot>(&target, message)
                .map_err(|refused| refused.reason)
        })
        .on_session(move |start| {
            start.session.bind(&pilots, start.session.player());
            admit(start)
        })
        .on_session_closed(move |session| closing.lock().unwrap().push(session.player()))
        .start()
        .unwrap();
    World {
        gateway,
        sessions,
        tree,
        closed,
        inputs,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    WebSocket,
}

/// A test client over either transport, sending raw bytes when asked to misbehave.
pub enum Client {
    Tcp(Framed<TcpStream, FrameCodec>),
    WebSocket(WebSocketStream<TcpStream>),
}

/// Everything a client may receive.
fn client_config() -> DecodeConfig {
    DecodeConfig {
        known_kind: |_| true,
        ..DecodeConfig::default()
    }
}

pub fn encode<M: Message>(message: &M, seq: u32) -> Vec<u8> {
    let mut wire = BytesMut::new();
    FrameCodec::default()
        .encode_message(message, FrameMeta::seq(seq), &mut wire)
        .unwrap();
    wire.to_vec()
}

pub fn hello(player: u64) -> Vec<u8> {
    encode(
        &Hello {
            ticket: ticket::mint(KEY, player, ticket::unix_now() + 600),
            layout: 0,
        },
        0,
    )
}

pub fn input(target: u64, seq: u32) -> Vec<u8> {
    encode(
        &Input {
            entity: target,
            x: seq as i32,
            y: 0,
            seq,
            tick: 0,
        },
        seq,
    )
}

impl Client {
    pub async fn connect(world: &World, transport: Transport) -> Client {
        match transport {
            Transport::Tcp => {
                let stream = TcpStream::connect(world.gateway.tcp_addr().unwrap())
                    .await
                    .unwrap();
                Client::Tcp(Framed::new(stream, FrameCodec::new(client_config())))
            }
            Transport::WebSocket => {
                let address: SocketAddr = world.gateway.websocket_addr().unwrap();
                let stream = TcpStream::connect(address).await.unwrap();
                let (socket, _) =
                    tokio_tungstenite::client_async(format!("ws://{address}/"), stream)
                        .await
                        .unwrap();
                Client::WebSocket(socket)
            }
        }
    }

    /// Sends bytes as they are: one WebSocket message, or straight onto the TCP stream.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        match self {
            Client::Tcp(framed) => {
                let _ = framed.get_mut().write_all(&bytes).await;
            }
            Client::WebSocket(socket) => {
                let _ = socket.send(WsMessage::Binary(Bytes::from(bytes))).await;
            }
        }
    }

    /// Ends the client's sending side (TCP) or the socket (WebSocket).
    pub async fn finish_sending(&mut self) {
        match self {
            Client::Tcp(framed) => {
                let _ = framed.get_mut().shutdown().await;
            }
            Client::WebSocket(socket) => {
                let _ = socket.close(None).await;
            }
        }
    }

    /// The next frame, `None` at end of stream; panics after the deadline.
    pub async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(LIMIT, async {
            match self {
                Client::Tcp(framed) => framed.next().await.and_then(Result::ok),
                Client::WebSocket(socket) => loop {
                    match socket.next().await {
                        Some(Ok(WsMessage::Binary(data))) => {
                            break Frame::decode_exact(data, &client_config()).ok();
                        }
                        Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break None,
                        Some(Ok(_)) => continue,
                    }
                },
            }
        })
        .await
        .expect("the server answers or closes in time")
    }

    /// Reads until the server's `Close` and returns its code (`None` if it closed without one).
    pub async fn close_code(&mut self) -> Option<u16> {
        self.close().await.map(|(code, _)| code)
    }

    /// Reads until the server's `Close` and returns its code and reason.
    pub async fn close(&mut self) -> Option<(u16, String)> {
        while let Some(frame) = self.recv().await {
            if let Ok(Control::Close(close)) = Control::validate(frame) {
                return Some((close.code.to_native(), close.reason.to_string()));
            }
        }
        None
    }

    pub async fn handshake(&mut self, player: u64) -> control::Welcome {
        self.send_raw(hello(player)).await;
        let frame = self.recv().await.expect("a welcome");
        assert!(
            frame.header().reply,
            "Welcome answers Hello: the reply flag"
        );
        match Control::validate(frame).expect("a control frame") {
            Control::Welcome(welcome) => welcome.deserialize().unwrap(),
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    /// Sends `count` inputs to its own pilot and checks every echo comes back, in order.
    pub async fn exchange(&mut self, player: u64, first: u32, count: u32) {
        for seq in first..first + count {
            self.send_raw(input(player, seq)).await;
        }
        for seq in first..first + count {
            let frame = self.recv().await.expect("an echo");
            let echo = frame.access::<Input>().expect("an input echo");
            assert_eq!(
                echo.seq.to_native(),
                seq,
                "echoes arrive in order, none lost"
            );
        }
    }
}

type Misbehaviour = fn(Transport) -> Vec<Vec<u8>>;

/// (name, what the hostile client sends, whether it handshakes first, the close code expected).
fn table() -> Vec<(&'static str, bool, Misbehaviour, CloseCode)> {
    vec![
        (
            "bytes before the handshake",
            false,
            |_| vec![input(1, 1)],
            CloseCode::HandshakeExpected,
        ),
        (
            "wrong protocol version",
            false,
            |_| {
                vec![{
                    let mut hello = hello(2);
                    hello[4] = 9;
                    hello
                }]
            },
            CloseCode::UnsupportedVersion,
        ),
        (
            "forged ticket",
            false,
            |_| {
                let forged = Ticket {
                    player: 3,
                    expires_at: ticket::unix_now() + 600,
                    mac: [7; 32],
                };
                vec![encode(
                    &Hello {
                        ticket: forged,
                        layout: 0,
                    },
                    0,
                )]
            },
            CloseCode::BadTicket,
        ),
        (
            "ticket signed with another key",
            false,
            |_| {
                vec![encode(
                    &Hello {
                        ticket: ticket::mint(b"another key", 3, ticket::unix_now() + 600),
                        layout: 0,
                    },
                    0,
                )]
            },
            CloseCode::BadTicket,
        ),
        (
            "expired ticket",
            false,
            |_| {
                vec![encode(
                    &Hello {
                        ticket: ticket::mint(KEY, 4, ticket::unix_now() - 1),
                        layout: 0,
                    },
                    0,
                )]
            },
            CloseCode::ExpiredTicket,
        ),
        (
            "a length prefix of 4 GiB",
            true,
            |_| vec![u32::MAX.to_le_bytes().to_vec()],
            CloseCode::FrameTooLarge,
        ),
        (
            "unknown message kind",
            true,
            |_| {
                vec![{
                    let mut frame = input(5, 1);
                    frame[6..8].copy_from_slice(&0x0777u16.to_le_bytes());
                    frame
                }]
            },
            CloseCode::ProtocolError,
        ),
        (
            "invalid archive",
            true,
            |_| {
                vec![{
                    let mut frame = encode(
                        &Chat {
                            from: "x".into(),
                            text: "a text that does not fit inline".into(),
                        },
                        1,
                    );
                    let n = frame.len();
                    frame[n - 4..].copy_from_slice(&0x7fff_0000i32.to_le_bytes());
                    frame
                }]
            },
            CloseCode::ProtocolError,
        ),
        // Chats: the pilot does not answer them, so only the inbound rate is tested.
        (
            "a flood far above the rate limit",
            true,
            |_| {
                (0..2_000)
                    .map(|seq| {
                        encode(
                            &Chat {
                                from: "f".into(),
                                text: "spam".into(),
                            },
                            seq,
                        )
                    })
                    .collect()
            },
            CloseCode::RateLimited,
        ),
    ]
}

async fn hostile_table(transport: Transport) {
    let world = world(|_| {}).await;
    let mut good = Client::connect(&world, transport).await;
    good.handshake(100).await;
    for (round, (name, handshake_first, misbehave, expected)) in (0u32..).zip(table()) {
        let mut hostile = Client::connect(&world, transport).await;
        if handshake_first {
            hostile.handshake(5).await;
        }
        for bytes in misbehave(transport) {
            hostile.send_raw(bytes).await;
        }
        assert_eq!(
            hostile.close_code().await,
            Some(expected.code()),
            "{transport:?}: {name}"
        );
        // The well-behaved client on the same gateway is unaffected.
        good.exchange(100, round * 10, 10).await;
    }
    let metrics = world.gateway.metrics();
    assert_eq!(metrics.closed_with(CloseCode::BadTicket), 2);
    assert_eq!(metrics.closed_with(CloseCode::ProtocolError), 2);
    world.gateway.shutdown().await;
    world.tree.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_over_tcp() {
    hostile_table(Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_over_websocket() {
    hostile_table(Transport::WebSocket).await;
}

async fn truncated_frame(transport: Transport) {
    let world = world(|_| {}).await;
    let mut good = Client::connect(&world, transport).await;
    good.handshake(100).await;
    let mut hostile = Client::connect(&world, transport).await;
    hostile.handshake(6).await;
    hostile.send_raw(input(6, 1)[..9].to_vec()).await;
    if transport == Transport::Tcp {
        // The stream ends inside the frame.
        hostile.finish_sending().await;
    }
    assert_eq!(
        hostile.close_code().await,
        Some(CloseCode::ProtocolError.code()),
        "{transport:?}"
    );
    good.exchange(100, 0, 10).await;
    world.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_truncated_frames() {
    truncated_frame(Transport::Tcp).await;
    truncated_frame(Transport::WebSocket).await;
}

async fn foreign_entity(transport: Transport) {
    let world = world(|_| {}).await;
    let mut good = Client::connect(&world, transport).await;
    good.handshake(8).await;
    let mut hostile = Client::connect(&world, transport).await;
    hostile.handshake(7).await;
    hostile.send_raw(input(8, 41)).await; // player 8's pilot
    let refused = Control::validate(hostile.recv().await.unwrap()).unwrap();
    let Control::Refused(refused) = refused else {
        panic!("expected a refusal, got {refused:?}")
    };
    assert_eq!(
        (refused.seq.to_native(), refused.code.to_native()),
        (41, RefusalCode::NotBound.code()),
        "{transport:?}"
    );
    // The connection stays open and its own pilot still answers; player 8 saw nothing of it.
    hostile.exchange(7, 1, 3).await;
    good.exchange(8, 0, 10).await;
    world.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frame_for_another_players_entity_is_refused() {
    foreign_entity(Transport::Tcp).await;
    foreign_entity(Transport::WebSocket).await;
}

async fn silent(transport: Transport) {
    let world = world(|config| config.idle_timeout = Duration::from_millis(500)).await;
    let mut good = Client::connect(&world, transport).await;
    good.handshake(100).await;
    let mut silent = Client::connect(&world, transport).await;
    let mut idle = Client::connect(&world, transport).await;
    idle.handshake(9).await;
    // The good client keeps talking (a frame every 100 ms) while the others fall silent: it
    // must outlive both timeouts and lose nothing.
    let talk = async {
        for round in 0..12 {
            good.exchange(100, round, 1).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (silent_code, idle_code, ()) = tokio::join!(silent.close_code(), idle.close_code(), talk);
    assert_eq!(
        silent_code,
        Some(CloseCode::HandshakeTimeout.code()),
        "{transport:?} handshake"
    );
    assert_eq!(
        idle_code,
        Some(CloseCode::IdleTimeout.code()),
        "{transport:?} idle"
    );
    world.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_silent_clients_time_out() {
    silent(Transport::Tcp).await;
    silent(Transport::WebSocket).await;
}

async fn never_reads(transport: Transport) {
    // The queue bound is not what catches the lazy client: its socket fills, its writer stalls,
    // and then its queue overflows. A bound of 64 leaves room for the good client's bursts.
    let world = world(|config| config.outbound_capacity = 64).await;
    let mut good = Client::connect(&world, transport).await;
    good.handshake(100).await;
    let mut lazy = Client::connect(&world, transport).await;
    lazy.handshake(11).await;
    // Push until the lazy client's socket and queue are full: then it is a slow consumer.
    let big = garrison_protocol::encode_frame(
        &Chat {
            from: "server".into(),
            text: "x".repeat(30_000),
        },
        FrameMeta::default(),
    )
    .unwrap();
    let mut pushed = 0;
    while world.sessions.push(SessionId(11), big.clone()).is_ok() && pushed < 100_000 {
        pushed += 1;
        if pushed % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    eventually("the slow consumer closed", LIMIT, || {
        let closed = world.gateway.metrics().closed_with(CloseCode::SlowConsumer) == 1;
        async move { closed }
    })
    .await;
    good.exchange(100, 0, 10).await;
    assert_eq!(
        world.gateway.metrics().closed_with(CloseCode::SlowConsumer),
        1,
        "only the lazy client"
    );
    drop(lazy);
    world.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_client_that_never_reads_is_a_slow_consumer() {
    never_reads(Transport::Tcp).await;
    never_reads(Transport::WebSocket).await;
}

async fn text_message() {
    let world = world(|_| {}).await;
    let mut good = Client::connect(&world, Transport::WebSocket).await;
    good.handshake(100).await;
    let mut hostile = Client::connect(&world, Transport::WebSocket).await;
    if let Client::WebSocket(socket) = &mut hostile {
        socket.send(WsMessage::Text("hello?".into())).await.unwrap();
    }
    assert_eq!(
        hostile.close_code().await,
        Some(CloseCode::ProtocolError.code())
    );
    good.exchange(100, 0, 10).await;
    world.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_websocket_text_messages_are_refused() {
    text_message().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connections_past_the_limit_are_refused_with_a_reason() {
    let world = world(|config| config.max_connections = 2).await;
    let mut first = Client::connect(&world, Transport::Tcp).await;
    first.handshake(1).await;
    let mut second = Client::connect(&world, Transport::Tcp).await;
    second.handshake(2).await;
    let mut third = Client::connect(&world, Transport::Tcp).await;
    assert_eq!(third.close_code().await, Some(CloseCode::ServerFull.code()));
    first.exchange(1, 0, 5).await;
    world.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_takes_the_session_over() {
    for transport in [Transport::Tcp, Transport::WebSocket] {
        let world = world(|_| {}).await;
        let mut old = Client::connect(&world, transport).await;
        assert!(!old.handshake(21).await.resumed);
        old.exchange(21, 0, 3).await;
        let mut new = Client::connect(&world, transport).await;
        assert!(
            new.handshake(21).await.resumed,
            "{transport:?}: the session is resumed"
        );
        assert_eq!(
            old.close_code().await,
            Some(CloseCode::Replaced.code()),
            "{transport:?}"
        );
        new.exchange(21, 3, 3).await;
        world.gateway.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_tells_every_client() {
    let world = world(|_| {}).await;
    let mut clients = Vec::new();
    for (player, transport) in [
        (31, Transport::Tcp),
        (32, Transport::WebSocket),
        (33, Transport::Tcp),
    ] {
        let mut client = Client::connect(&world, transport).await;
        client.handshake(player).await;
        clients.push(client);
    }
    let tcp = world.gateway.tcp_addr().unwrap();
    world.gateway.shutdown().await;
    for client in &mut clients {
        assert_eq!(
            client.close_code().await,
            Some(CloseCode::ServerShutdown.code())
        );
    }
    assert!(
        TcpStream::connect(tcp).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_players_session_is_closed_after_the_grace_window() {
    let world = world(|config| config.reconnect_grace = Duration::from_millis(300)).await;
    // Back within the grace window: resumed, bindings intact.
    let mut first = Client::connect(&world, Transport::Tcp).await;
    first.handshake(41).await;
    drop(first);
    eventually("detached", LIMIT, || {
        let active = world.gateway.metrics().active;
        async move { active == 0 }
    })
    .await;
    let mut back = Client::connect(&world, Transport::Tcp).await;
    assert!(back.handshake(41).await.resumed);
    back.exchange(41, 0, 3).await;
    assert!(
        world.closed.lock().unwrap().is_empty(),
        "a player back within the window did not leave"
    );
    drop(back);
    // Gone for good: the session and its bindings are closed once the window passes.
    eventually("the session closed", LIMIT, || {
        let open = world.sessions.contains(SessionId(41));
        async move { !open }
    })
    .await;
    eventually("the closed hook", LIMIT, || {
        let told = *world.closed.lock().unwrap() == [41];
        async move { told }
    })
    .await;
    let mut later = Client::connect(&world, Transport::Tcp).await;
    assert!(!later.handshake(41).await.resumed, "a fresh session");
    later.exchange(41, 3, 3).await;
    world.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_routing_to_a_kind_not_running_or_not_served_fails_to_start_and_says_how() {
    let sessions = Arc::new(Sessions::new());
    let mut settings = GatewayConfig::new(KEY);
    settings.tcp = Some("127.0.0.1:0".parse().unwrap());
    // Served, but missing from any running tree.
    let pilots = Entities::new(
        Pilot {
            sessions: sessions.clone(),
            pilots: None,
            inputs: Arc::default(),
        },
        KindConfig::default(),
    )
    .unwrap();
    let started = GatewayBuilder::to_entity(
        settings.clone(),
        sessions.clone(),
        &pilots,
        |session| session.player(),
        |message: TestMessage| message,
    )
    .start();
    let error = started.expect_err("refused at start");
    assert_eq!(
        error,
        garrison_runtime::Error::KindNotRunning {
            kind: "pilot",
            why: "not running"
        }
    );
    assert!(
        error
            .to_string()
            .contains("add `entities \"pilot\" => registry.start();` to the `supervisor!` tree"),
        "{error}"
    );
    // Declared, never served.
    let declared = Entities::<Pilot>::declare(KindConfig::default()).unwrap();
    let started = GatewayBuilder::<TestMessage>::new(settings, sessions, |_, _| Ok(()))
        .requires(&declared)
        .start();
    assert_eq!(
        started.err(),
        Some(garrison_runtime::Error::KindNotRunning {
            kind: "pilot",
            why: "not served"
        })
    );
}
