//! Run with: `cargo run --release -p garrison-battle -- demo`
//!
//! `demo`: the battle server and its bots in one process: a 60 Hz lockstep match server behind
//! the Garrison gateway on loopback, and bots that connect over TCP, play, verify every checksum,
//! and report latency, bandwidth, frame deviation and desyncs (the same flags as `battle-bots`).
//! `serve`: the server alone, for `battle-bots --server`.
//!
//! Traces go to an OTLP endpoint only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use garrison_battle::{
    run::{self, BotArgs, DEMO_KEY},
    server::BattleServer,
};
use garrison_runtime::telemetry::{self, TelemetryConfig};

#[derive(Parser)]
#[command(about = "Garrison's sample battle server with bots")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server and bots together on loopback, then prints the table.
    Demo(BotArgs),
    /// Runs the server until Ctrl-C.
    Serve {
        /// The TCP address players connect to.
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: SocketAddr,
        /// Players per room.
        #[arg(long, default_value_t = 8)]
        room_size: usize,
        /// The key tickets are signed with.
        #[arg(long, default_value = DEMO_KEY)]
        key: String,
        /// Seconds a match lasts.
        #[arg(long, default_value_t = 180)]
        match_seconds: u64,
    },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _telemetry = telemetry::install(&TelemetryConfig::from_env("battle-server"))?;
    match Cli::parse().command {
        Command::Demo(args) => run::main(args).await,
        Command::Serve {
            listen,
            room_size,
            key,
            match_seconds,
        } => {
            let mut config = run::local_server(room_size, &key)?;
            config.gateway.tcp = Some(listen);
            config.match_frames = run::match_frames(match_seconds);
            let server = BattleServer::start(config).await?;
            eprintln!(
                "battle server on {}; Ctrl-C stops it",
                server.gateway.tcp_addr().ok_or("no TCP listener")?
            );
            tokio::signal::ctrl_c().await?;
            server.stop().await;
            // The telemetry guard, dropped on return, flushes the last spans.
            Ok(())
        }
    }
}
