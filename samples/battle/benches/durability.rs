//! What durability costs the battle server, side by side in one run: the same bots against an
//! in-process server keeping matches in memory only, in redb with the log-based checkpoint (a
//! snapshot every 60 frames, the inputs and frames logged in between), and in redb with a
//! snapshot every frame (the whole-state checkpoint rooms used before the log). Runs alternate;
//! the table gives CPU per client-second (server and bots, one process) and its ratio to memory
//! only (goal: <= 1.10), and bytes written per room per second (write amplification). Then the
//! recovery: 100 rooms stopped, and the time from a new server's start on the same store to
//! every one of them executing a frame again (goal: <= 1 s).
//!
//! Run with: `cargo bench -p garrison-battle --bench durability` (`-- --quick`: 200 clients,
//! shorter runs; `-- --clients N`).

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use clap::Parser;
use garrison_battle::run::{BotArgs, run_once};

#[derive(Parser)]
struct Cli {
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    clients: Option<u64>,
    #[arg(long)]
    bench: bool,
    /// Only the recovery.
    #[arg(long)]
    recovery: bool,
}

/// The bots' defaults, as `battle-bots` parses them.
#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    args: BotArgs,
}

struct Config {
    name: &'static str,
    store: bool,
    snapshot_every: u32,
}

const CONFIGS: [Config; 3] = [
    Config {
        name: "memory only",
        store: false,
        snapshot_every: 60,
    },
    Config {
        name: "redb, snapshot + log (ours)",
        store: true,
        snapshot_every: 60,
    },
    Config {
        name: "redb, snapshot every frame",
        store: true,
        snapshot_every: 1,
    },
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let cli = Cli::parse();
    if cli.recovery {
        return recovery().await;
    }
    let clients = cli.clients.unwrap_or(if cli.quick { 200 } else { 500 });
    let (rounds, seconds) = if cli.quick { (1, 5) } else { (2, 8) };
    println!(
        "{clients} bots, rooms of 8, 60 Hz, {rounds} alternating runs of {seconds} s per configuration"
    );
    let mut totals = [(0.0f64, 0u64, 0.0f64, 0usize, 0u32); 3];
    for round in 0..rounds {
        for (index, config) in CONFIGS.iter().enumerate() {
            let dir = std::env::temp_dir().join(format!(
                "garrison-durability-bench-{}-{round}-{index}",
                std::process::id()
            ));
            let mut args = Defaults::parse_from(["bench"]).args;
            args.clients = clients;
            args.duration = seconds;
            // Matches longer than the run: every room plays the whole time.
            args.match_seconds = 600;
            args.snapshot_every = config.snapshot_every;
            args.data_dir = config.store.then(|| PathBuf::from(&dir));
            let summary = run_once(&args, clients, false).await?;
            let _ = std::fs::remove_dir_all(&dir);
            if summary.failed > 0 || summary.desyncs > 0 {
                return Err(format!(
                    "{}: {} bots failed, {} desyncs",
                    config.name, summary.failed, summary.desyncs
                )
                .into());
            }
            let total = &mut totals[index];
            total.0 += summary.cpu_seconds.unwrap_or(f64::NAN);
            total.1 += summary.store_bytes.unwrap_or(0);
            total.2 += seconds as f64;
            total.3 = summary.rooms;
            total.4 = total.4.max(summary.deviation_frames);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let per_client_second =
        |(cpu, _, secs, _, _): (f64, u64, f64, usize, u32)| cpu / (secs * clients as f64) * 1e3;
    let base = per_client_second(totals[0]);
    println!(
        "{:<30} {:>18} {:>12} {:>22} {:>10}",
        "configuration", "CPU ms/client-s", "vs memory", "store bytes/room-s", "deviation"
    );
    for (config, total) in CONFIGS.iter().zip(totals) {
        let rooms = total.3.max(1) as f64;
        println!(
            "{:<30} {:>18.3} {:>11.2}x {:>22.0} {:>10}",
            config.name,
            per_client_second(total),
            per_client_second(total) / base,
            total.1 as f64 / (total.2 * rooms),
            total.4
        );
    }
    let amplification = totals[2].1 as f64 / totals[1].1.max(1) as f64;
    println!("write amplification, snapshot every frame / snapshot + log: {amplification:.1}x");
    recovery().await
}

/// Rooms a recovery starts.
const ROOMS: u64 = 100;

/// 100 rooms of 2 play for 3 s on redb and stop gracefully; a new server on the same store is
/// timed from its start until every one of the 100 has executed a frame again.
async fn recovery() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let dir = std::env::temp_dir().join(format!("garrison-recovery-bench-{}", std::process::id()));
    let mut args = Defaults::parse_from(["bench"]).args;
    args.clients = ROOMS * 2;
    args.room_size = 2;
    args.duration = 3;
    args.match_seconds = 600;
    args.data_dir = Some(dir.clone());
    let summary = run_once(&args, args.clients, false).await?;
    if summary.rooms as u64 != ROOMS {
        return Err(format!("{} rooms played, not {ROOMS}", summary.rooms).into());
    }
    // The first server's kinds hold each other's handles, so in this process its database
    // stays open; a restarted process would open the file itself: open a copy of it (everything
    // was flushed by the graceful stop).
    let copy = dir.with_extension("restarted");
    std::fs::create_dir_all(&copy)?;
    std::fs::copy(dir.join("garrison.redb"), copy.join("garrison.redb"))?;
    let started = Instant::now();
    let mut config = garrison_battle::run::local_server(2, &args.key)?;
    config.match_frames = garrison_battle::run::match_frames(600);
    config.store = Some(Arc::new(garrison_runtime::store::RedbStore::open(&copy)?));
    let server = garrison_battle::server::BattleServer::start(config).await?;
    let deadline = started + Duration::from_secs(30);
    while server.stats.recovered_ticking.load(Ordering::Relaxed) < ROOMS {
        if Instant::now() > deadline {
            return Err("the rooms did not all tick again within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let recovered = server.stats.recovered.load(Ordering::Relaxed);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&copy);
    println!(
        "recovery from redb: {recovered} rooms recovered, all {ROOMS} ticking again {:.0} ms \
         after the server's start (goal: <= 1,000 ms)",
        elapsed.as_secs_f64() * 1e3
    );
    Ok(())
}
