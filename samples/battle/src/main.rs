//! Run with: `cargo run --release -p garrison-battle -- demo`
//!
//! The battle server and its bots in one process: a 60 Hz lockstep match server behind the
//! Garrison gateway on loopback, and bots that connect over TCP, play, verify every checksum, and
//! report latency, bandwidth, frame deviation and desyncs.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use garrison_battle::{
    bots::{Summary, play},
    server::{BattleServer, ServerConfig},
};
use garrison_runtime::gateway::GatewayConfig;

#[derive(Parser)]
#[command(about = "Garrison's sample battle server with bots")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server and bots together on loopback, then prints the table.
    Demo {
        /// Bot clients.
        #[arg(long, default_value_t = 64)]
        clients: u64,
        /// Players per room.
        #[arg(long, default_value_t = 8)]
        room_size: usize,
        /// Seconds to play.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Print one JSON object on the last line as well.
        #[arg(long)]
        json: bool,
        /// Crash every room every N seconds (fault injection); 0 never.
        #[arg(long, default_value_t = 0)]
        room_panic_every: u64,
    },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let Command::Demo {
        clients,
        room_size,
        duration,
        json,
        room_panic_every,
    } = Cli::parse().command;
    let key = b"demo ticket key".to_vec();
    let mut gateway = GatewayConfig::new(key.clone());
    gateway.tcp = Some("127.0.0.1:0".parse()?);
    let server = BattleServer::start(ServerConfig {
        room_size: room_size.max(1),
        tick: Duration::from_micros(16_667),
        input_delay: 3,
        gateway,
    })
    .await?;
    let address = server.gateway.tcp_addr().ok_or("no TCP listener")?;
    eprintln!(
        "battle server on {address}; {clients} bots in rooms of {room_size} for {duration} s"
    );

    let start = Instant::now();
    let deadline = start + Duration::from_secs(duration);
    let bots: Vec<_> = (1..=clients)
        .map(|player| tokio::spawn(play(address, key.clone(), player, deadline)))
        .collect();
    let progress = {
        let stats = server.stats.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticker.tick().await;
                eprint!(
                    "\r{:>4.0} s  rooms {:>4}  frames {:>8}",
                    start.elapsed().as_secs_f64(),
                    stats.rooms.load(Ordering::Relaxed),
                    stats.frames.load(Ordering::Relaxed)
                );
            }
        })
    };
    let server = std::sync::Arc::new(server);
    let chaos = (room_panic_every > 0).then(|| {
        let server = server.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(room_panic_every));
            every.tick().await;
            loop {
                every.tick().await;
                server.crash_rooms();
            }
        })
    });
    let mut reports = Vec::new();
    for bot in bots {
        reports.push(bot.await.unwrap_or_else(|error| Err(error.to_string())));
    }
    progress.abort();
    if let Some(chaos) = &chaos {
        chaos.abort();
    }
    eprintln!();
    let summary = Summary::new(
        &reports,
        server.stats.frames.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    );
    for failure in reports
        .iter()
        .filter_map(|report| report.as_ref().err())
        .take(3)
    {
        eprintln!("bot failed: {failure}");
    }
    println!("{}", summary.table());
    println!(
        "frames run late and caught up {}  room restarts {}",
        server.stats.overruns.load(Ordering::Relaxed),
        server.stats.restarts.load(Ordering::Relaxed)
    );
    if json {
        println!("{}", summary.json());
    }
    if let Some(chaos) = chaos {
        // Aborted above; wait for it to let go of its handle on the server.
        let _ = chaos.await;
    }
    match std::sync::Arc::try_unwrap(server) {
        Ok(server) => server.stop().await,
        Err(_) => return Err("the server is still shared".into()),
    }
    Ok(())
}
