//! The gateway's edges: a closed client reads its `Close` (never a reset), the `Close` says what
//! was wrong, a client that never reads is bounded by the outbound queue rather than the kernel's
//! buffers, a refusing session hook changes nothing, tickets have a maximum lifetime, a client
//! built against other message layouts is told so, a frame that crashes its entity is
//! answered, and a session moved to another node tells its client where to go and loses none
//! of the inputs the client sent before it heard.

use std::time::Duration;

use garrison_protocol::{
    FrameMeta, Protocol,
    control::{Control, Hello, RefusalCode},
};
use garrison_runtime::{
    SessionId,
    gateway::{CloseCode, ticket},
};
use garrison_tests::{
    probe::eventually,
    wire::{Chat, TestMessage},
};

use crate::gateway_hostile::{
    Client, KEY, Transport, encode, hello, input, world, world_with_hook,
};

const LIMIT: Duration = Duration::from_secs(10);

fn chat(text: &str, seq: u32) -> Vec<u8> {
    encode(
        &Chat {
            from: "edge".into(),
            text: text.into(),
        },
        seq,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_reads_its_close_and_is_never_reset() {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    let world = world(|config| config.close_linger = Duration::from_secs(5)).await;
    for round in 0..5u64 {
        let Client::Tcp(framed) = Client::connect(&world, Transport::Tcp).await else {
            unreachable!("a TCP client")
        };
        let parts = framed.into_parts();
        let (read, mut write) = parts.io.into_split();
        let mut reader = tokio_util::codec::FramedRead::new(read, parts.codec);
        write.write_all(&hello(200 + round)).await.unwrap();
        // Far past the rate limit in one burst.
        let flood = chat("spam", 1).repeat(2_000);
        write.write_all(&flood).await.unwrap();
        let mut close = None;
        while close.is_none() {
            let frame = tokio::time::timeout(LIMIT, reader.next())
                .await
                .expect("the server answers")
                .expect("a Close before the end of the stream")
                .unwrap_or_else(|error| panic!("round {round}: reset before the Close: {error}"));
            if let Ok(Control::Close(closed)) = Control::validate(frame) {
                close = Some((closed.code.to_native(), closed.reason.to_string()));
            }
        }
        assert_eq!(
            close,
            Some((
                CloseCode::RateLimited.code(),
                "more than 200 messages per second (burst 300)".to_owned()
            )),
            "round {round}"
        );
        // Still sending after the Close (as a flooding client does): the server keeps reading
        // and discarding, so nothing it has not read turns its close into a reset...
        write
            .write_all(&flood)
            .await
            .unwrap_or_else(|error| panic!("round {round}: the server reset the flood: {error}"));
        // ...and once the client closes its side, the stream ends cleanly.
        write.shutdown().await.unwrap();
        let end = tokio::time::timeout(LIMIT, reader.next())
            .await
            .expect("the stream ends");
        assert!(
            end.is_none(),
            "round {round}: expected a clean end of stream, got {end:?}"
        );
        // A reset may land behind the end of stream; the socket would still report it.
        let pending = reader.get_ref().as_ref().take_error().unwrap();
        assert!(
            pending.is_none(),
            "round {round}: the server reset the connection: {pending:?}"
        );
    }
    world.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_close_says_what_was_wrong() {
    let world = world(|config| config.max_ticket_lifetime = Duration::from_secs(3_600)).await;
    let never_expires = encode(
        &Hello {
            ticket: ticket::mint(KEY, 7, u64::MAX),
            layout: 0,
        },
        0,
    );
    let expired = encode(
        &Hello {
            ticket: ticket::mint(KEY, 7, ticket::unix_now() - 30),
            layout: 0,
        },
        0,
    );
    let forged = {
        let mut ticket = ticket::mint(KEY, 7, ticket::unix_now() + 60);
        ticket.mac[0] ^= 1;
        encode(&Hello { ticket, layout: 0 }, 0)
    };
    let cases: Vec<(&str, Vec<u8>, CloseCode, &str)> = vec![
        (
            "a ticket valid for ever",
            never_expires,
            CloseCode::BadTicket,
            "beyond the server's maximum ticket lifetime of 3600 s",
        ),
        (
            "an expired ticket",
            expired,
            CloseCode::ExpiredTicket,
            "the ticket expired 3",
        ),
        (
            "a forged ticket",
            forged,
            CloseCode::BadTicket,
            "the ticket's signature does not match",
        ),
        (
            "a chat before the Hello",
            chat("hi", 1),
            CloseCode::HandshakeExpected,
            "the first frame must be a Hello (kind 0xff00), not kind 0x0002",
        ),
        (
            "a length prefix of 4 GiB",
            u32::MAX.to_le_bytes().to_vec(),
            CloseCode::FrameTooLarge,
            "frame of 4294967299 bytes exceeds the maximum of 65536",
        ),
    ];
    for transport in [Transport::Tcp, Transport::WebSocket] {
        for (name, bytes, code, reason) in &cases {
            if transport == Transport::WebSocket && *name == "a length prefix of 4 GiB" {
                // A WebSocket message holds exactly one frame: 4 bytes are a truncated header.
                continue;
            }
            let mut client = Client::connect(&world, transport).await;
            client.send_raw(bytes.clone()).await;
            let (closed_with, said) = client.close().await.expect("a Close");
            assert_eq!(closed_with, code.code(), "{transport:?}: {name}: {said}");
            assert!(
                said.contains(reason),
                "{transport:?}: {name}: the Close said {said:?}, expected it to contain {reason:?}"
            );
        }
    }
    world.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_built_against_another_layout_is_closed_with_both_hashes() {
    let world = world(|config| config.layout = Some(0x1234_5678_9abc_def0)).await;
    let with_layout = |player: u64, layout: u64| {
        encode(
            &Hello {
                ticket: ticket::mint(KEY, player, ticket::unix_now() + 60),
                layout,
            },
            0,
        )
    };
    for transport in [Transport::Tcp, Transport::WebSocket] {
        let mut stale = Client::connect(&world, transport).await;
        stale.send_raw(with_layout(31, 0x0bad)).await;
        let (code, said) = stale.close().await.expect("a Close");
        assert_eq!(
            code,
            CloseCode::LayoutMismatch.code(),
            "{transport:?}: {said}"
        );
        assert!(
            said.contains("0000000000000bad") && said.contains("123456789abcdef0"),
            "{transport:?}: the Close names both layouts: {said}"
        );
        // The same player with the server's layout is welcomed.
        let mut current = Client::connect(&world, transport).await;
        current
            .send_raw(with_layout(31, 0x1234_5678_9abc_def0))
            .await;
        let frame = current.recv().await.expect("a Welcome");
        assert!(
            matches!(Control::validate(frame), Ok(Control::Welcome(_))),
            "{transport:?}: the matching layout is welcomed"
        );
    }
    assert_eq!(
        world
            .gateway
            .metrics()
            .closed_with(CloseCode::LayoutMismatch),
        2
    );
    world.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_bounded_by_the_outbound_queue_not_the_kernel() {
    let world = world(|config| config.outbound_capacity = 32).await;
    let mut lazy = Client::connect(&world, Transport::Tcp).await;
    lazy.handshake(12).await;
    let frame = garrison_protocol::encode_frame(
        &Chat {
            from: "server".into(),
            text: "x".repeat(4_000),
        },
        FrameMeta::default(),
    )
    .unwrap();
    // The Welcome is queued just before the session is attached: wait for the attach (the
    // game's cue is the `Connected` event) before counting refusals as the close.
    let sessions = world.sessions.clone();
    let first = frame.clone();
    eventually("the session attached", LIMIT, || {
        let attached = sessions.push(SessionId(12), first.clone()).is_ok();
        async move { attached }
    })
    .await;
    let mut pushed = frame.wire().len();
    // A game pushing a frame every millisecond: the writer keeps up until the kernel's buffers
    // are full, then the queue fills and the connection is closed as a slow consumer.
    while world.sessions.push(SessionId(12), frame.clone()).is_ok() {
        pushed += frame.wire().len();
        assert!(pushed < 64 << 20, "never closed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    eventually("the slow consumer closed", LIMIT, || {
        let closed = world.gateway.metrics().closed_with(CloseCode::SlowConsumer) == 1;
        async move { closed }
    })
    .await;
    // The queue (32 x 4 KB), a 64 KiB send buffer (the kernel doubles it) and the client's
    // receive buffer: well under a megabyte. The kernel's own autotuning absorbs ~4 MiB.
    assert!(
        pushed < 1 << 20,
        "{pushed} bytes were accepted for a client that never reads"
    );
    drop(lazy);
    world.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_session_hook_keeps_the_live_connection_and_leaves_no_session() {
    for transport in [Transport::Tcp, Transport::WebSocket] {
        // Refuses a player's second connection, and player 66 altogether.
        let world = world_with_hook(
            |_| {},
            |start| {
                if start.resumed {
                    Err(format!(
                        "player {} already plays here",
                        start.session.player()
                    ))
                } else if start.session.player() == 66 {
                    Err("player 66 is banned".to_owned())
                } else {
                    Ok(())
                }
            },
        )
        .await;
        let mut live = Client::connect(&world, transport).await;
        live.handshake(65).await;
        let mut second = Client::connect(&world, transport).await;
        second.send_raw(hello(65)).await;
        assert_eq!(
            second.close().await,
            Some((
                CloseCode::SessionRefused.code(),
                "player 65 already plays here".to_owned()
            )),
            "{transport:?}"
        );
        // The live connection was not replaced: it still plays.
        live.exchange(65, 0, 5).await;
        let mut banned = Client::connect(&world, transport).await;
        banned.send_raw(hello(66)).await;
        assert_eq!(
            banned.close_code().await,
            Some(CloseCode::SessionRefused.code())
        );
        assert!(
            !world.sessions.contains(SessionId(66)),
            "{transport:?}: a refused handshake left a session behind"
        );
        assert_eq!(world.sessions.len(), 1);
        world.gateway.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_crashes_its_entity_is_answered_with_its_seq() {
    let world = world(|_| {}).await;
    for (player, transport) in [(71, Transport::Tcp), (72, Transport::WebSocket)] {
        let mut client = Client::connect(&world, transport).await;
        client.handshake(player).await;
        client.send_raw(chat("crash", 77)).await;
        let answer = Control::validate(client.recv().await.expect("an answer")).unwrap();
        let Control::Refused(refused) = answer else {
            panic!("{transport:?}: expected a refusal, got {answer:?}");
        };
        assert_eq!(
            (refused.seq.to_native(), refused.code.to_native()),
            (77, RefusalCode::Failed.code()),
            "{transport:?}"
        );
        assert_eq!(
            refused.reason.as_str(),
            "the pilot entity failed to handle this message; it was dead-lettered, not retried"
        );
        // The pilot restarted; the connection plays on.
        client.exchange(player, 1, 3).await;
    }
    world.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_answered_with_its_seq_and_the_reply_flag_and_a_push_is_not() {
    let world = world(|_| {}).await;
    for (player, transport) in [(81, Transport::Tcp), (82, Transport::WebSocket)] {
        let mut client = Client::connect(&world, transport).await;
        client.handshake(player).await;
        // The pilot answers "ask" with `context.reply`; a push (its echo of an input) carries
        // the input's seq too, but no reply flag.
        client
            .send_raw(crate::gateway_hostile::input(player, 5))
            .await;
        client.send_raw(chat("ask", 41)).await;
        let push = client.recv().await.expect("the echo");
        assert_eq!(
            (push.header().seq, push.header().reply),
            (5, false),
            "{transport:?}: a push is no reply"
        );
        let reply = client.recv().await.expect("the answer");
        assert_eq!(
            (reply.header().seq, reply.header().reply),
            (41, true),
            "{transport:?}"
        );
        let answer = TestMessage::validate(reply).expect("a chat");
        let TestMessage::Chat(answer) = answer else {
            panic!("{transport:?}: expected the chat answer");
        };
        assert_eq!(
            answer.text.as_str(),
            "answer 2",
            "{transport:?}: its second message"
        );
        // A request one entity passes on with `forward` is answered by the next (pilot 0, at
        // its first message).
        client.send_raw(chat("relay", 43)).await;
        let relayed = client.recv().await.expect("the relayed answer");
        assert_eq!(
            (relayed.header().seq, relayed.header().reply),
            (43, true),
            "{transport:?}"
        );
        let TestMessage::Chat(relayed) = TestMessage::validate(relayed).unwrap() else {
            panic!("{transport:?}: expected the chat answer");
        };
        assert_eq!(relayed.text.as_str(), format!("answer {}", player - 80));
        // A refusal answers its request the same way.
        client.send_raw(chat("crash", 42)).await;
        let refused = client.recv().await.expect("the refusal");
        assert_eq!(
            (refused.header().seq, refused.header().reply),
            (42, true),
            "{transport:?}"
        );
        assert!(matches!(
            Control::validate(refused),
            Ok(Control::Refused(_))
        ));
    }
    world.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_session_tells_its_client_where_to_go_and_is_not_closed_for_good() {
    use garrison_client::{Client, ClientConfig, Event};

    let world = world(|config| config.reconnect_grace = Duration::from_millis(100)).await;
    let address = world.gateway.tcp_addr().expect("a TCP listener");
    let mut client = Client::<TestMessage>::connect(ClientConfig::new(
        address,
        ticket::mint(KEY, 41, ticket::unix_now() + 60),
    ))
    .await
    .expect("connects");
    eventually("the session is open", LIMIT, || async {
        world.sessions.contains(SessionId(41))
    })
    .await;
    world
        .sessions
        .redirect(SessionId(41), "127.0.0.1:7801", "node-b")
        .expect("redirected");
    assert!(
        !world.sessions.contains(SessionId(41)),
        "closed here at once"
    );
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(LIMIT, client.next())
        .await
        .expect("the client hears")
    {
        match event {
            Event::Redirected { address, node } => {
                events.push(format!("redirect {address} {node}"))
            }
            Event::Closed { code, .. } => events.push(format!("closed {code:?}")),
            Event::Message(_) => {}
            other => events.push(format!("{other:?}")),
        }
    }
    assert_eq!(
        events,
        vec![
            "redirect 127.0.0.1:7801 node-b".to_owned(),
            format!("closed Some({})", CloseCode::Moved.code())
        ]
    );
    // The player goes on elsewhere: past the reconnect grace, the closed hook has not run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        world.closed.lock().unwrap().is_empty(),
        "{:?}",
        world.closed
    );
    // A session that is not open cannot be moved.
    assert!(
        world
            .sessions
            .redirect(SessionId(41), "127.0.0.1:7801", "node-b")
            .is_err()
    );
    world.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_a_client_sent_before_it_heard_of_its_move_or_a_shutdown_still_reach_its_entity() {
    let cases = [
        (43, Transport::Tcp, CloseCode::Moved),
        (44, Transport::WebSocket, CloseCode::Moved),
        (45, Transport::Tcp, CloseCode::ServerShutdown),
        (46, Transport::WebSocket, CloseCode::ServerShutdown),
    ];
    for (player, transport, code) in cases {
        let world = world(|_| {}).await;
        let mut client = Client::connect(&world, transport).await;
        client.handshake(player).await;
        let mut gateway = Some(world.gateway);
        let shutdown = if code == CloseCode::Moved {
            world
                .sessions
                .redirect(SessionId(player), "127.0.0.1:7801", "node-b")
                .expect("redirected");
            None
        } else {
            gateway
                .take()
                .map(|gateway| tokio::spawn(gateway.shutdown()))
        };
        let mut heard = Vec::new();
        let close = loop {
            let frame = client.recv().await.expect("the close");
            match Control::validate(frame) {
                Ok(Control::Close(close)) => break close.code.to_native(),
                Ok(Control::Redirect(_)) => heard.push("redirect"),
                _ => heard.push("something else"),
            }
        };
        assert_eq!(close, code.code(), "{transport:?}");
        let expected: &[&str] = if code == CloseCode::Moved {
            &["redirect"]
        } else {
            &[]
        };
        assert_eq!(heard, expected, "{transport:?} {code:?}");
        // Sent after the server began to close, as a playing client does in the round trip
        // before it reads the close: the server cannot tell these from earlier ones.
        for seq in 1..=50 {
            client.send_raw(input(player, seq)).await;
        }
        client.finish_sending().await;
        eventually("every input reached the pilot", LIMIT, || async {
            world.inputs.lock().unwrap().get(&player) == Some(&50)
        })
        .await;
        if let Some(shutdown) = shutdown {
            shutdown.await.expect("the gateway shut down");
        }
        if let Some(gateway) = gateway {
            gateway.shutdown().await;
        }
    }
}

/// A client told `ServerShutdown` comes straight back, as a game client does. A reconnect that
/// reaches the gateway while it stops is told `ServerShutdown` before it is welcomed (or finds
/// the listener gone, or is reset from the listen backlog as the listener closes, before any
/// frame): the stopping gateway never serves a new session it would then drop without a close
/// code, which a client would count as a second server restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnecting_while_the_gateway_stops_are_told_it_stops_or_refused() {
    const ROUNDS: u32 = 30;
    const CLIENTS: u64 = 16;
    // The race is narrow: many stops make it likely to show.
    for round in 0..ROUNDS {
        stop_under_reconnects(round, CLIENTS).await;
    }
}

/// One stop of a gateway while `clients` reconnect as soon as they are closed.
async fn stop_under_reconnects(round: u32, clients: u64) {
    use futures_util::StreamExt;
    use garrison_protocol::FrameCodec;
    use tokio::io::AsyncWriteExt;

    // Long enough that a session served by mistake would still be open when its client gives
    // up waiting for a close.
    let world = world(|config| config.drain_timeout = Duration::from_secs(30)).await;
    let address = world.gateway.tcp_addr().expect("a TCP listener");
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            tokio::spawn(async move {
                // Each connection: whether it was welcomed, and its close code (`None`: it
                // ended without one).
                let mut outcomes = Vec::new();
                for attempt in 0u64.. {
                    let Ok(stream) = tokio::net::TcpStream::connect(address).await else {
                        // The listener is gone: the gateway stopped.
                        return outcomes;
                    };
                    let mut framed = tokio_util::codec::Framed::new(stream, FrameCodec::default());
                    let player = 1_000 + client * 10_000 + attempt;
                    let _ = framed.get_mut().write_all(&hello(player)).await;
                    let mut welcomed = false;
                    let mut code = None;
                    while let Ok(Some(Ok(frame))) = tokio::time::timeout(LIMIT, framed.next()).await
                    {
                        match Control::validate(frame) {
                            Ok(Control::Welcome(_)) => welcomed = true,
                            Ok(Control::Close(close)) => {
                                code = Some(close.code.to_native());
                                break;
                            }
                            _ => {}
                        }
                    }
                    outcomes.push((welcomed, code));
                    let _ = framed.get_mut().shutdown().await;
                }
                outcomes
            })
        })
        .collect();
    eventually("every client is in", LIMIT, || async {
        world.sessions.len() == clients as usize
    })
    .await;
    world.gateway.shutdown().await;
    let shutdown = Some(CloseCode::ServerShutdown.code());
    for client in tasks {
        let outcomes = client.await.expect("the client ran");
        assert_eq!(
            outcomes.first(),
            Some(&(true, shutdown)),
            "round {round}: a session of the running gateway hears ServerShutdown: {outcomes:?}"
        );
        for outcome in &outcomes[1..] {
            assert!(
                matches!(outcome, (false, code) if *code == shutdown || code.is_none()),
                "round {round}: a reconnect is told ServerShutdown (or reset from the backlog) \
                 before any welcome: {outcomes:?}"
            );
        }
    }
}
