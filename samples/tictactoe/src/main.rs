//! `cargo run -p garrison-tictactoe`: a server and two players who play one game, printed move by
//! move. `cargo run -p garrison-tictactoe -- serve 127.0.0.1:7100` only serves (tickets signed
//! with the demo key below), until Ctrl-C.

use std::time::Duration;

use garrison_client::{Client, ClientConfig};
use garrison_runtime::{gateway::GatewayConfig, protocol::ticket};
use garrison_tictactoe::{Mark, Server, Sit, Ttt};

/// The demo's ticket key: a real server reads its key from its secrets, never from its source.
const KEY: &[u8] = b"tictactoe-demo-key";

fn board(cells: &[u8; 9]) -> String {
    let mark = |cell: u8| match cell {
        1 => 'X',
        2 => 'O',
        _ => '.',
    };
    cells
        .chunks(3)
        .map(|row| row.iter().map(|&cell| mark(cell)).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn player(
    address: std::net::SocketAddr,
    id: u64,
) -> Result<Client<Ttt>, Box<dyn std::error::Error>> {
    let ticket = ticket::mint(KEY, id, ticket::unix_now() + 60);
    Ok(Client::connect(ClientConfig::new(address, ticket)).await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let serve = args.next().as_deref() == Some("serve");
    let address = match args.next() {
        Some(address) => address.parse()?,
        None => "127.0.0.1:0".parse()?,
    };
    let mut config = GatewayConfig::new(KEY);
    config.tcp = Some(address);
    let server = Server::start(config, Duration::from_secs(10)).await?;
    let address = server.gateway.tcp_addr().ok_or("no TCP listener")?;
    if serve {
        println!("serving tic-tac-toe on {address}; Ctrl-C stops");
        tokio::signal::ctrl_c().await?;
        server.stop().await;
        return Ok(());
    }
    // Players 1 and 2 share table 1; X takes the left column.
    let (x, mut o) = (player(address, 1).await?, player(address, 2).await?);
    x.request(&Sit {}).await?;
    o.request(&Sit {}).await?;
    for (turn, cell) in [0u8, 4, 3, 8, 6].into_iter().enumerate() {
        let mover = if turn % 2 == 0 { &x } else { &o };
        let Ttt::Board(after) = mover.request(&Mark { cell }).await? else {
            return Err("a move is answered with the board".into());
        };
        println!(
            "{} marks {cell}:\n{}\n",
            if turn % 2 == 0 { 'X' } else { 'O' },
            board(&after.cells)
        );
    }
    while let Some(message) = o.next_message().await {
        if let Ttt::Outcome(outcome) = message {
            let winner = outcome.winner.as_ref().map(|winner| winner.to_native());
            println!("result: winner {winner:?} ({})", outcome.reason);
            break;
        }
    }
    drop((x, o));
    server.stop().await;
    Ok(())
}
