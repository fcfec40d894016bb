//! The first sample, played with the Rust client: a full game with a crash of the table in the
//! middle (the board survives, the result reaches both players), an illegal move refused, the
//! turn clock (kept across a crash) making an idle player forfeit, a dropped connection resumed
//! with the same ticket, and a player who leaves for good forfeiting.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use garrison_client::{Client, ClientConfig, ClientError, Event};
use garrison_runtime::{gateway::GatewayConfig, protocol::ticket};
use garrison_tests::probe::eventually;
use garrison_tictactoe::{Mark, Server, Sit, TableMsg, Ttt};
use tokio::{net::TcpListener, sync::Notify};

const KEY: &[u8] = b"tictactoe-test-key";
const LIMIT: Duration = Duration::from_secs(10);

/// A server whose players forfeit after `turn` without moving, and whose sessions wait `grace`
/// for a reconnect.
async fn server_with(turn: Duration, grace: Duration) -> Server {
    let mut config = GatewayConfig::new(KEY);
    config.tcp = Some("127.0.0.1:0".parse().unwrap());
    config.websocket = Some("127.0.0.1:0".parse().unwrap());
    config.reconnect_grace = grace;
    Server::start(config, turn).await.unwrap()
}

async fn server(turn: Duration) -> Server {
    server_with(turn, LIMIT).await
}

fn config(address: SocketAddr, player: u64) -> ClientConfig {
    ClientConfig::new(address, ticket::mint(KEY, player, ticket::unix_now() + 60))
}

/// The board a request was answered with.
fn board(answer: Result<Ttt, ClientError>) -> [u8; 9] {
    match answer.expect("the request is answered") {
        Ttt::Board(board) => board.cells,
        _ => panic!("a board"),
    }
}

/// The next outcome the client is told: (winner, reason).
async fn outcome(client: &mut Client<Ttt>) -> (Option<u64>, String) {
    tokio::time::timeout(LIMIT, async {
        while let Some(message) = client.next_message().await {
            if let Ttt::Outcome(outcome) = message {
                let winner = outcome.winner.as_ref().map(|winner| winner.to_native());
                return (winner, outcome.reason.to_string());
            }
        }
        panic!("the session ended without an outcome");
    })
    .await
    .expect("an outcome in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_game_survives_a_crash_of_its_table_and_both_players_hear_the_result() {
    let server = server(LIMIT).await;
    let tcp = server.gateway.tcp_addr().unwrap();
    let ws = server.gateway.websocket_addr().unwrap();
    let mut x = Client::<Ttt>::connect(config(tcp, 1)).await.unwrap();
    let mut o = Client::<Ttt>::connect(config(ws, 2).websocket())
        .await
        .unwrap();
    assert_eq!((x.session(), o.session()), (1, 2));
    board(x.request(&Sit {}).await);
    board(o.request(&Sit {}).await);
    assert_eq!(board(x.request(&Mark { cell: 0 }).await)[0], 1);
    // Not O's turn twice, and not a taken cell: refused with the request's own seq.
    board(o.request(&Mark { cell: 4 }).await);
    match o.request(&Mark { cell: 5 }).await {
        Err(ClientError::Refused { code, reason, .. }) => {
            assert_eq!(
                (code, reason.as_str()),
                (103, "not your turn, or not a free cell")
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The table crashes mid-game; its board was checkpointed after every move.
    assert!(server.tables.send(&1, TableMsg::Crash).is_ok());
    let cells = board(x.request(&Mark { cell: 3 }).await);
    assert_eq!(
        cells,
        [1, 0, 0, 1, 2, 0, 0, 0, 0],
        "the board survived the crash"
    );
    board(o.request(&Mark { cell: 8 }).await);
    board(x.request(&Mark { cell: 6 }).await);
    for client in [&mut x, &mut o] {
        assert_eq!(
            outcome(client).await,
            (Some(1), "three in a row".to_owned())
        );
    }
    // The table stopped with its game: its clock is gone with it.
    eventually("the clock cancelled", LIMIT, || {
        let armed = server.tables.timers_armed();
        async move { armed == 0 }
    })
    .await;
    // The crash is the one dead letter.
    let letters = server.tables.dead_letters().snapshot();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "injected crash");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_player_forfeits_when_the_turn_clock_runs_out_even_across_a_crash() {
    let server = server(Duration::from_millis(400)).await;
    let tcp = server.gateway.tcp_addr().unwrap();
    let mut x = Client::<Ttt>::connect(config(tcp, 3)).await.unwrap();
    let mut o = Client::<Ttt>::connect(config(tcp, 4)).await.unwrap();
    board(x.request(&Sit {}).await);
    board(o.request(&Sit {}).await);
    // X (player 3) never moves; its table crashes meanwhile, and its clock goes on.
    assert!(server.tables.send(&2, TableMsg::Crash).is_ok());
    let expected = (Some(4), "forfeit: player 3 ran out of time".to_owned());
    assert_eq!(outcome(&mut o).await, expected);
    assert_eq!(outcome(&mut x).await, expected);
    server.stop().await;
}

/// A loopback TCP proxy whose connections the test cuts.
async fn proxy(upstream: SocketAddr) -> (SocketAddr, Arc<Notify>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let cut = Arc::new(Notify::new());
    let cutting = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
            let cut = cutting.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    () = cut.notified() => {}
                }
            });
        }
    });
    (address, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_with_the_same_ticket_and_the_game_goes_on() {
    let server = server(LIMIT).await;
    let tcp = server.gateway.tcp_addr().unwrap();
    let (through, cut) = proxy(tcp).await;
    let mut x = Client::<Ttt>::connect(config(through, 5)).await.unwrap();
    let o = Client::<Ttt>::connect(config(tcp, 6)).await.unwrap();
    board(x.request(&Sit {}).await);
    board(o.request(&Sit {}).await);
    board(x.request(&Mark { cell: 4 }).await);
    cut.notify_waiters();
    let mut seen = Vec::new();
    let cells = tokio::time::timeout(LIMIT, async {
        loop {
            match x.next().await.expect("events until the board") {
                Event::Disconnected { .. } => seen.push("disconnected"),
                Event::Reconnected { resumed: true } => seen.push("resumed"),
                Event::Reconnected { resumed: false } => panic!("the session was lost"),
                // The table tells a resumed player the board as it stands.
                Event::Message(Ttt::Board(board)) if seen.contains(&"resumed") => {
                    break board.cells;
                }
                Event::Message(_) => {}
                Event::Closed { reason, .. } => panic!("closed: {reason}"),
                Event::Refused { reason, .. } => panic!("refused: {reason}"),
                Event::Redirected { address, .. } => panic!("redirected to {address}"),
            }
        }
    })
    .await
    .expect("resumed in time");
    assert_eq!(seen, ["disconnected", "resumed"]);
    assert_eq!(cells[4], 1, "the board as X left it");
    // The game goes on over the new connection.
    board(o.request(&Mark { cell: 0 }).await);
    assert_eq!(board(x.request(&Mark { cell: 8 }).await)[8], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_who_leaves_for_good_forfeits_once_the_grace_window_ends() {
    let server = server_with(LIMIT, Duration::from_millis(300)).await;
    let tcp = server.gateway.tcp_addr().unwrap();
    let x = Client::<Ttt>::connect(config(tcp, 7)).await.unwrap();
    let mut o = Client::<Ttt>::connect(config(tcp, 8)).await.unwrap();
    board(x.request(&Sit {}).await);
    board(o.request(&Sit {}).await);
    drop(x);
    assert_eq!(
        outcome(&mut o).await,
        (Some(8), "forfeit: player 7 left".to_owned())
    );
    server.stop().await;
}
