//! Overload protection, side by side in one run: the same in-process battle server with no
//! protection, with the source's fixed QPS + P99 breaker, and with Garrison's adaptive limit,
//! at 1x, 2x and 3x the load where the rooms first run late.
//!
//! First a ramp with no protection finds 1x: the fewest bots (in steps) at which the P99
//! input -> broadcast latency exceeds one tick beyond the natural wait for the next frame (so
//! P99 > 2 ticks, 33.3 ms). Then each configuration plays at each multiple. Per run: the
//! running rooms' P99 (the bots that were seated), frame deviation (the widest spread, in whole
//! ticks, between a room's clients receiving the same frame), how far a client trailed its room
//! when the run stopped ("behind"), desyncs, bots seated, and what was shed (frames refused with
//! code 105, as the bots saw them); for the adaptive limit, its value at the end and how many
//! of its windows were over the target; and the machine's steal time during the run (CPU the
//! hypervisor gave other guests: this shared machine's noise, measured). The goal: at 3x, with
//! the adaptive limit, P99 within two ticks beyond the natural wait (50 ms) and deviation 0,
//! while excess joins are refused with a retry-after.
//!
//! Each step runs in a fresh process (the bench runs itself with `--one`), so no run inherits
//! an earlier one's sockets, tasks or allocator state.
//!
//! Run with: `cargo bench -p garrison-battle --bench overload` (`-- --quick`: bigger steps,
//! shorter runs; `-- --base N` skips the ramp and takes N bots as 1x).

use clap::Parser;
use garrison_battle::{
    report::Summary,
    run::{BotArgs, run_once},
};

#[derive(Parser)]
struct Cli {
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    bench: bool,
    /// Bots at 1x (skips the ramp).
    #[arg(long)]
    base: Option<u64>,
    /// One run, in this process: `CLIENTS,PROTECTION,BREAKER_BASE_QPS,SECONDS`. The bench runs
    /// each step in a fresh process this way, so no run inherits an earlier one's sockets,
    /// tasks or allocator state.
    #[arg(long, hide = true)]
    one: Option<String>,
}

/// What a run reports back to the bench.
struct Row {
    p99_ms: f64,
    deviation: u64,
    behind: u64,
    desyncs: u64,
    seated: u64,
    shed: u64,
    /// The adaptive limit at the end, and its windows over the target of all it read ("-"
    /// under another protection).
    limit: String,
    /// CPU time the hypervisor gave other guests during the run (steal), in seconds.
    steal_seconds: f64,
}

/// The machine's steal time so far, in seconds (Linux: the eighth value of `/proc/stat`'s `cpu`
/// line, in clock ticks of 1/100 s); 0 where it cannot be read.
fn steal_seconds() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let line = stat.lines().find(|line| line.starts_with("cpu "))?;
            line.split_whitespace().nth(8)?.parse::<f64>().ok()
        })
        .map_or(0.0, |ticks| ticks / 100.0)
}

const ROW_PREFIX: &str = "overload-row";

/// Runs one step in a child process (this bench, with `--one`) and reads its row.
fn run_step(
    clients: u64,
    seconds: u64,
    overload: &str,
    breaker_base_qps: f64,
) -> Result<Row, Box<dyn std::error::Error + Send + Sync>> {
    let output = std::process::Command::new(std::env::current_exe()?)
        .arg("--one")
        .arg(format!("{clients},{overload},{breaker_base_qps},{seconds}"))
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix(ROW_PREFIX))
        .ok_or_else(|| {
            format!(
                "the {overload} run at {clients} bots reported no row ({})",
                output.status
            )
        })?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let number = |index: usize| -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        Ok(fields.get(index).ok_or("a short row")?.parse()?)
    };
    Ok(Row {
        p99_ms: fields.first().ok_or("an empty row")?.parse()?,
        deviation: number(1)?,
        behind: number(2)?,
        desyncs: number(3)?,
        seated: number(4)?,
        shed: number(5)?,
        limit: fields.get(6).ok_or("a short row")?.to_string(),
        steal_seconds: fields.get(7).ok_or("a short row")?.parse()?,
    })
}

/// The bots' defaults, as `battle-bots` parses them.
#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    args: BotArgs,
}

const TICK_MS: f64 = 1000.0 / 60.0;

async fn run(
    clients: u64,
    seconds: u64,
    overload: &str,
    breaker_base_qps: f64,
) -> Result<Summary, Box<dyn std::error::Error + Send + Sync>> {
    let mut args = Defaults::parse_from(["bench"]).args;
    args.clients = clients;
    args.duration = seconds;
    // Matches longer than the run: every seated bot plays the whole time.
    args.match_seconds = 600;
    args.overload = overload.to_owned();
    args.breaker_base_qps = breaker_base_qps;
    run_once(&args, clients, false).await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let cli = Cli::parse();
    if let Some(one) = &cli.one {
        let parts: Vec<&str> = one.split(',').collect();
        let [clients, overload, base_qps, seconds] = parts[..] else {
            return Err(format!(
                "--one takes CLIENTS,PROTECTION,BREAKER_BASE_QPS,SECONDS, not {one}"
            )
            .into());
        };
        let steal = steal_seconds();
        let summary = run(
            clients.parse()?,
            seconds.parse()?,
            overload,
            base_qps.parse()?,
        )
        .await?;
        let steal = steal_seconds() - steal;
        let limit = summary.overload.as_ref().map_or("-".to_owned(), |stats| {
            format!("{}({}/{})", stats.limit, stats.over_windows, stats.windows)
        });
        println!(
            "{ROW_PREFIX} {} {} {} {} {} {} {limit} {steal:.2}",
            summary.p99_ms,
            summary.deviation_frames,
            summary.behind_at_end_frames,
            summary.desyncs,
            summary.clients - summary.unmatched,
            summary.shed
        );
        return Ok(());
    }
    let (step, ramp_seconds, seconds) = if cli.quick { (200, 4, 6) } else { (100, 5, 10) };
    let base = match cli.base {
        Some(base) => base,
        None => {
            println!(
                "ramp, no protection, {ramp_seconds} s per step (1x: P99 > 2 ticks = {:.1} ms):",
                2.0 * TICK_MS
            );
            let mut clients = step;
            loop {
                let row = run_step(clients, ramp_seconds, "none", 0.0)?;
                println!(
                    "  {clients:>5} bots: P99 {:>7.1} ms, deviation {:>3}",
                    row.p99_ms, row.deviation
                );
                if row.p99_ms > 2.0 * TICK_MS || clients >= 4000 {
                    break clients;
                }
                clients += step;
            }
        }
    };
    // The breaker's baselines: the 1x request rate (every bot's 60 inputs a second) and one
    // tick of latency, as the source sizes it.
    let base_qps = base as f64 * 60.0;
    println!(
        "1x = {base} bots; rooms of 8, 60 Hz, {seconds} s per run; breaker base {base_qps:.0} frames/s and one tick"
    );
    println!(
        "{:<10} {:>5} {:>6} {:>10} {:>16} {:>10} {:>7} {:>8} {:>8} {:>8} {:>16} {:>8}",
        "protection",
        "load",
        "bots",
        "P99 ms",
        "P99 - tick, ticks",
        "deviation",
        "behind",
        "desyncs",
        "seated",
        "shed",
        "limit(over/win)",
        "steal s"
    );
    for multiple in [1u64, 2, 3] {
        for overload in ["none", "breaker", "adaptive"] {
            let clients = base * multiple;
            let row = run_step(clients, seconds, overload, base_qps)?;
            println!(
                "{:<10} {:>4}x {:>6} {:>10.1} {:>16.2} {:>10} {:>7} {:>8} {:>8} {:>8} {:>16} {:>8.2}",
                overload,
                multiple,
                clients,
                row.p99_ms,
                (row.p99_ms - TICK_MS) / TICK_MS,
                row.deviation,
                row.behind,
                row.desyncs,
                row.seated,
                row.shed,
                row.limit,
                row.steal_seconds
            );
        }
    }
    Ok(())
}
