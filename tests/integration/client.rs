//! `garrison-client` against a real gateway: a request gets its own reply, a pushed frame is an
//! event, a refusal of a frame sent without waiting names its seq, a request nobody answers
//! times out, a bad ticket is rejected with the server's reason, the server's close is the last
//! event, and the client counts its bytes.

use std::time::Duration;

use garrison_client::{Client, ClientConfig, ClientError, Event};
use garrison_runtime::gateway::{CloseCode, ticket};
use garrison_tests::wire::{Chat, Input, TestMessage};

use crate::gateway_hostile::{KEY, World, world};

const LIMIT: Duration = Duration::from_secs(10);

fn config(world: &World, player: u64) -> ClientConfig {
    let ticket = ticket::mint(KEY, player, ticket::unix_now() + 60);
    ClientConfig::new(world.gateway.tcp_addr().unwrap(), ticket)
}

fn chat(text: &str) -> Chat {
    Chat {
        from: "client".into(),
        text: text.into(),
    }
}

async fn next(client: &mut Client<TestMessage>) -> Event<TestMessage> {
    tokio::time::timeout(LIMIT, client.next())
        .await
        .expect("an event in time")
        .expect("an event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_replies_pushes_and_refusals_each_reach_their_caller() {
    let world = world(|_| {}).await;
    for (player, websocket) in [(91, false), (92, true)] {
        let mut config = config(&world, player);
        if websocket {
            config.address = world.gateway.websocket_addr().unwrap();
            config = config.websocket();
        }
        config.request_timeout = Duration::from_millis(300);
        let mut client = Client::<TestMessage>::connect(config).await.unwrap();
        // A push: the pilot echoes an input to the session.
        let input = Input {
            entity: player,
            x: 7,
            y: 0,
            seq: 1,
            tick: 0,
        };
        client.send(&input).await.unwrap();
        let Event::Message(TestMessage::Input(echo)) = next(&mut client).await else {
            panic!("the echo");
        };
        assert_eq!(echo.x.to_native(), 7);
        // A request gets its own reply (its second message at the pilot).
        let TestMessage::Chat(answer) = client.request(&chat("ask")).await.unwrap() else {
            panic!("a chat");
        };
        assert_eq!(answer.text.as_str(), "answer 2");
        // A frame sent without waiting, refused: an event naming its seq.
        let seq = client.send(&chat("crash")).await.unwrap();
        match next(&mut client).await {
            Event::Refused {
                seq: refused, code, ..
            } => assert_eq!((refused, code), (seq, 104)),
            other => panic!("expected the refusal, got {other:?}"),
        }
        // The same as a request: the request's error.
        match client.request(&chat("crash")).await {
            Err(ClientError::Refused { code: 104, .. }) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Nobody answers a plain chat.
        match client.request(&chat("hello")).await {
            Err(ClientError::Timeout { timeout, .. }) => {
                assert_eq!(timeout, Duration::from_millis(300));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        let traffic = client.traffic();
        assert!(
            traffic.bytes_in > 0 && traffic.bytes_out > traffic.bytes_in / 4,
            "{traffic:?}"
        );
    }
    world.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ticket_is_rejected_and_the_servers_close_is_the_last_event() {
    let world = world(|_| {}).await;
    let mut forged = config(&world, 93);
    forged.ticket.mac[0] ^= 1;
    match Client::<TestMessage>::connect(forged).await {
        Err(ClientError::Rejected { code, reason }) => {
            assert_eq!(code, CloseCode::BadTicket.code());
            assert!(reason.contains("signature"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let mut client = Client::<TestMessage>::connect(config(&world, 94))
        .await
        .unwrap();
    assert_eq!(client.session(), 94);
    world.gateway.shutdown().await;
    loop {
        match next(&mut client).await {
            Event::Closed { code, .. } => {
                assert_eq!(code, Some(CloseCode::ServerShutdown.code()));
                break;
            }
            Event::Message(_) => {}
            other => panic!("expected the close, got {other:?}"),
        }
    }
    assert!(client.next().await.is_none(), "nothing after the close");
    assert!(matches!(
        client.send(&chat("late")).await,
        Err(ClientError::Closed)
    ));
}
