//! Spectators: a client without a seat watches a running room from the frame it is at, mirrors
//! it from the deltas and also re-simulates it from the inputs, both verifying every checksum
//! and the result, across a crash of the room; a seated player, a room that is not playing and a room full of spectators
//! refuse a `Watch` with their code; a spectator's inputs are refused; the room's release
//! leaves no spectator behind.

use std::{
    net::SocketAddr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use garrison_battle::{
    bots::{BotOptions, play},
    proto::{Join, MatchStart, PlayerInput, SPECTATOR, ServerMessage, Updates, Watch, layout_hash},
    run::local_server,
    server::{BattleServer, ServerConfig},
    sim::{Change, World},
};
use garrison_client::{Client, ClientConfig, ClientError, Event};
use garrison_protocol::control::RefusalCode;
use garrison_runtime::gateway::ticket;
use garrison_tests::probe::eventually;

const KEY: &str = "test key";

async fn server(configure: impl FnOnce(&mut ServerConfig)) -> (BattleServer, SocketAddr) {
    let mut config = local_server(2, KEY).unwrap();
    configure(&mut config);
    let server = BattleServer::start(config).await.unwrap();
    let address = server.gateway.tcp_addr().unwrap();
    (server, address)
}

async fn client(address: SocketAddr, player: u64) -> Client<ServerMessage> {
    let ticket = ticket::mint(KEY.as_bytes(), player, ticket::unix_now() + 3600);
    Client::connect(ClientConfig::new(address, ticket).layout(layout_hash()))
        .await
        .unwrap()
}

/// Two bots play one match of `seconds` in a room of two.
fn two_bots(address: SocketAddr, seconds: u64) -> Vec<tokio::task::JoinHandle<()>> {
    let deadline = Instant::now() + Duration::from_secs(seconds + 10);
    (1..=2)
        .map(|player| {
            let options = BotOptions {
                matches: Some(1),
                ..BotOptions::default()
            };
            tokio::spawn(async move {
                let report = play(address, KEY.as_bytes().to_vec(), player, deadline, options)
                    .await
                    .unwrap();
                assert_eq!(report.matches_ended, 1, "{report:?}");
                assert_eq!(report.desyncs, 0, "{report:?}");
            })
        })
        .collect()
}

async fn a_room_plays(server: &BattleServer) {
    eventually("a room plays", Duration::from_secs(10), || {
        let rooms = server.stats.rooms.load(Ordering::Relaxed);
        async move { rooms >= 1 }
    })
    .await;
}

/// Watches with `watch`, expecting the spectator's `MatchStart`.
async fn watch(spectator: &Client<ServerMessage>, room: u64) -> MatchStart {
    match spectator.request(&Watch { room }).await {
        Ok(ServerMessage::MatchStart(start)) => {
            rkyv::deserialize::<MatchStart, rkyv::rancor::Error>(&*start).unwrap()
        }
        other => panic!("a Watch answered with {other:?}"),
    }
}

fn refusal_code(answer: Result<ServerMessage, ClientError>) -> u16 {
    match answer {
        Err(ClientError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spectator_mirrors_a_running_match_and_verifies_every_checksum_and_the_result() {
    let (server, address) = server(|config| config.match_frames = 240).await;
    let bots = two_bots(address, 4);
    a_room_plays(&server).await;
    let mut spectator = client(address, 100).await;
    let start = watch(&spectator, 0).await;
    assert_eq!(start.slot, SPECTATOR);
    assert_eq!((start.players, start.units.len()), (2, 2));
    assert_eq!(server.census().spectators, 1);
    // From the world it was given: one copy mirrored from the deltas, one re-simulated from the
    // inputs; the server's checksums must match both.
    let mut mirrored = World {
        frame: start.frame,
        rng: start.rng,
        units: start.units.clone(),
    };
    let mut simulated = mirrored.clone();
    // Its input is refused: it sits in no slot.
    let input = spectator
        .send(&PlayerInput {
            frame: start.frame + 10,
            buttons: 1,
        })
        .await
        .unwrap();
    let (mut frames, mut verified, mut input_refused) = (0u32, 0u32, false);
    let result = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), spectator.next())
            .await
            .expect("the room keeps sending")
            .expect("the session stays open");
        let message = match event {
            Event::Message(message) => message,
            Event::Refused { seq, code, .. } => {
                assert_eq!((seq, code), (input, RefusalCode::NotBound.code()));
                input_refused = true;
                continue;
            }
            other => panic!("unexpected {other:?}"),
        };
        match message {
            ServerMessage::FrameUpdate(update) => {
                assert_eq!(update.frame.to_native(), mirrored.frame, "frames in order");
                let inputs: Vec<u8> = update.inputs.to_vec();
                simulated.step(&inputs);
                let delta: Vec<_> =
                    rkyv::deserialize::<Vec<Change>, rkyv::rancor::Error>(&update.delta).unwrap();
                mirrored.apply(&delta);
                mirrored.frame += 1;
                frames += 1;
                // A crash mid-match: the room restarts from its checkpoint and goes on sending
                // to its spectators, with no frame missing.
                if frames == 60 {
                    server.crash_rooms();
                }
                if let Some(checksum) = update.checksum.as_ref() {
                    mirrored.rng = update.rng.as_ref().expect("with the checksum").to_native();
                    assert_eq!(mirrored.checksum(), checksum.to_native(), "mirrored");
                    assert_eq!(simulated.checksum(), checksum.to_native(), "simulated");
                    verified += 1;
                }
            }
            ServerMessage::MatchEnd(end) => break end,
            other => panic!("a spectator gets frame updates and the result, not {other:?}"),
        }
    };
    assert!(input_refused, "the spectator's input was refused");
    assert_eq!(server.stats.restarts.load(Ordering::Relaxed), 1);
    assert_eq!(result.frame.to_native(), simulated.frame);
    assert_eq!(result.checksum.to_native(), simulated.checksum());
    let kills: Vec<u32> = simulated.units.iter().map(|unit| unit.kills).collect();
    assert_eq!(
        result
            .kills
            .iter()
            .map(|k| k.to_native())
            .collect::<Vec<_>>(),
        kills
    );
    assert_eq!(frames, 240 - start.frame, "every frame from its start on");
    assert!(verified >= 3, "{verified} checksums verified");
    for bot in bots {
        bot.await.unwrap();
    }
    // The released room keeps no spectator.
    assert_eq!(server.census().spectators, 0);
    drop(spectator);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_is_refused_by_a_seated_player_a_room_not_playing_and_a_full_room() {
    let (server, address) = server(|config| config.spectators_per_room = 1).await;
    // Nothing plays yet.
    let idle = client(address, 100).await;
    assert_eq!(
        refusal_code(idle.request(&Watch { room: 0 }).await),
        RefusalCode::Rejected.code()
    );
    // A player and a bot fill a room.
    let mut player = client(address, 1).await;
    player
        .send(&Join {
            mode: 0,
            updates: Updates::Inputs,
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let bot = tokio::spawn(play(
        address,
        KEY.as_bytes().to_vec(),
        2,
        deadline,
        BotOptions {
            matches: Some(1),
            ..BotOptions::default()
        },
    ));
    let room = loop {
        if let ServerMessage::MatchStart(start) = player.next_message().await.unwrap() {
            break start.room.to_native();
        }
    };
    assert_eq!(
        refusal_code(player.request(&Watch { room }).await),
        RefusalCode::Rejected.code(),
        "a seated player watches between its matches"
    );
    assert_eq!(
        refusal_code(idle.request(&Watch { room: room + 1 }).await),
        RefusalCode::Rejected.code(),
        "no such room plays"
    );
    let first = watch(&idle, room).await;
    assert_eq!((first.room, first.slot), (room, SPECTATOR));
    let second = client(address, 101).await;
    assert_eq!(
        refusal_code(second.request(&Watch { room }).await),
        RefusalCode::Busy.code(),
        "one spectator is all this room takes"
    );
    assert_eq!(
        refusal_code(second.request(&Watch { room: 0 }).await),
        RefusalCode::Rejected.code(),
        "no room takes one more"
    );
    assert_eq!(server.census().spectators, 1);
    drop((player, bot, idle, second));
    server.stop().await;
}
