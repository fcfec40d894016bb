//! Run with: `cargo run --release -p garrison-battle -- demo`
//!
//! `demo`: the battle server and its bots in one process: a 60 Hz lockstep match server behind
//! the Garrison gateway on loopback, and bots that connect over TCP, play, verify every checksum,
//! and report latency, bandwidth, frame deviation and desyncs (the same flags as `battle-bots`).
//! `serve`: the server alone, for `battle-bots --server`; matches are kept in a store (redb in
//! `--data-dir`, or Redis with `--store`), so a restart resumes them.
//!
//! `cluster` (a build with `--features fleet`): three `serve --cluster` nodes on loopback with
//! bots across them and a node drained or killed every few seconds.
//!
//! Traces go to an OTLP endpoint only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use clap::{Parser, Subcommand};
use garrison_battle::run::{self, BotArgs, ServeArgs};
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
    /// Runs the server until SIGTERM or Ctrl-C (then stops gracefully), keeping matches in a
    /// store so a restart resumes them.
    Serve(ServeArgs),
    /// Prints the battle protocol's wire schema (JSON: every message's layout and the layout
    /// hash clients send); `samples/battle/schema.json` is this output.
    Schema,
    /// Runs a fleet of nodes on loopback (etcd and Redis, started here when installed), bots
    /// across them, and a chaos switch that drains or kills a node every few seconds; prints
    /// what each node did (a build with `--features fleet`).
    #[cfg(feature = "fleet")]
    Cluster(garrison_battle::cluster::ClusterArgs),
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let telemetry = telemetry::install(&TelemetryConfig::from_env("battle-server"))?;
    let result = match Cli::parse().command {
        Command::Demo(args) => run::main(args).await,
        Command::Serve(args) => run::serve(args).await,
        #[cfg(feature = "fleet")]
        Command::Cluster(args) => garrison_battle::cluster::main(args).await,
        Command::Schema => {
            print!("{}", garrison_battle::proto::schema().to_json());
            Ok(())
        }
    };
    // What the exporter still holds goes out before the process ends.
    telemetry.shutdown(std::time::Duration::from_secs(5)).await;
    result
}
