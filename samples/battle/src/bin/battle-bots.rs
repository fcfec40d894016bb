//! Bots for the battle server: `cargo run --release -p garrison-battle --bin battle-bots -- --help`
//!
//! Without `--server` the server runs in this process. `--sweep 10,100,500,1000,2000` prints
//! the decay table beside the source's rows and draws it to an SVG.

use clap::Parser;
use garrison_battle::run::{self, BotArgs};
use garrison_runtime::telemetry::{self, TelemetryConfig};

#[derive(Parser)]
#[command(about = "Bots for Garrison's sample battle server")]
struct Cli {
    #[command(flatten)]
    args: BotArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Traces go to an OTLP endpoint only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    let _telemetry = telemetry::install(&TelemetryConfig::from_env("battle-bots"))?;
    run::main(Cli::parse().args).await
}
