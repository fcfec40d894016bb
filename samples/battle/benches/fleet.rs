//! What the fleet layer costs a node: the battle server alone (`serve --store redis://...`)
//! beside the same server as a fleet of one node (`serve --cluster etcd=... --store
//! redis://...`: every room and the matchmaker sharded, every message routed by the table and
//! checked against the lease), the same bots against each, alternating over rounds. It prints
//! each server's CPU per client-frame (from `/proc/PID/stat`) and the ratio; the goal is at most
//! 1.10x.
//!
//! `cargo bench -p garrison-battle --features fleet --bench fleet -- [--clients N] [--seconds S]
//! [--rounds R]` (500 clients, 8 s, 3 rounds) with `GARRISON_ETCD_ENDPOINT` and
//! `GARRISON_REDIS_URL` set (an etcd and a Redis on loopback). The servers run on core 0, the
//! bots on core 1 (when `taskset` is there); each server is a child process stopped by its pid.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use garrison_battle::{
    bots::{BotOptions, play},
    process::ServerProcess,
    run::DEMO_KEY,
};
use garrison_runtime::clock::cpu_seconds_of;

/// Set once the bench runs pinned to core 1.
const PINNED: &str = "GARRISON_FLEET_BENCH_PINNED";

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let (mut clients, mut seconds, mut rounds) = (500u64, 8u64, 3usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--clients" => clients = args.next().ok_or("--clients N")?.parse()?,
            "--seconds" => seconds = args.next().ok_or("--seconds S")?.parse()?,
            "--rounds" => rounds = args.next().ok_or("--rounds R")?.parse()?,
            // `cargo bench` passes `--bench`; nothing else is ours.
            _ => {}
        }
    }
    let (Ok(etcd), Ok(redis)) = (
        std::env::var("GARRISON_ETCD_ENDPOINT"),
        std::env::var("GARRISON_REDIS_URL"),
    ) else {
        println!(
            "fleet bench: set GARRISON_ETCD_ENDPOINT and GARRISON_REDIS_URL (an etcd and a Redis \
             on loopback; see README, \"A fleet of nodes\")"
        );
        return Ok(());
    };
    let taskset = Command::new("taskset").arg("-V").output().is_ok();
    if taskset && std::env::var_os(PINNED).is_none() {
        let status = Command::new("taskset")
            .args(["-c", "1"])
            .arg(std::env::current_exe()?)
            .args(std::env::args().skip(1))
            .env(PINNED, "1")
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "fleet bench: {clients} bots in rooms of 8 at 60 Hz, {seconds} s per run, {rounds} rounds{}",
        if taskset {
            "; servers on core 0, bots on core 1"
        } else {
            " (no taskset: unpinned)"
        }
    );
    println!("round | server            | client-frames | CPU s | CPU us per client-frame");
    let mut costs: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for (which, name) in ["alone", "fleet of one"].into_iter().enumerate() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos());
            let namespace = format!("fleet-bench-{}-{nanos}", std::process::id());
            let mut command = if taskset {
                let mut command = Command::new("taskset");
                command.args(["-c", "0", env!("CARGO_BIN_EXE_garrison-battle")]);
                command
            } else {
                Command::new(env!("CARGO_BIN_EXE_garrison-battle"))
            };
            command
                .args(["serve", "--listen", "127.0.0.1:0", "--overload", "none"])
                .args(["--match-seconds", "600", "--key", DEMO_KEY])
                .args(["--store", &redis, "--store-namespace", &namespace])
                .env("RUST_LOG", "warn");
            if which == 1 {
                command.args([
                    "--cluster",
                    &format!("etcd={etcd}"),
                    "--fleet-name",
                    &namespace,
                ]);
            }
            let server = ServerProcess::start(&mut command)?;
            if which == 1 {
                // A fleet of one owns every shard once its first table is in.
                let start = Instant::now();
                while server
                    .last_line("fleet ")
                    .is_none_or(|line| !line.contains("shards=1024"))
                {
                    if start.elapsed() > Duration::from_secs(30) {
                        return Err("the fleet of one did not take its shards".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let (frames, cpu) = runtime.block_on(run(&server, clients, seconds))?;
            server.terminate(Duration::from_secs(30))?;
            let us = cpu / frames.max(1) as f64 * 1e6;
            println!("{round:>5} | {name:<17} | {frames:>13} | {cpu:>5.2} | {us:>23.2}");
            if frames == 0 {
                return Err(format!("{name}: no frame was played").into());
            }
            costs[which].push(us);
        }
    }
    let median = |costs: &mut Vec<f64>| {
        costs.sort_by(f64::total_cmp);
        costs[costs.len() / 2]
    };
    let (alone, fleet) = (median(&mut costs[0]), median(&mut costs[1]));
    println!(
        "median CPU per client-frame: alone {alone:.2} us, fleet of one {fleet:.2} us: \
         {:.2}x (goal <= 1.10x)",
        fleet / alone
    );
    Ok(())
}

/// `clients` bots against `server` for `seconds`: the frames they simulated and the server's
/// CPU seconds meanwhile.
async fn run(server: &ServerProcess, clients: u64, seconds: u64) -> Result<(u64, f64), Error> {
    let address = server.address();
    let cpu_start = cpu_seconds_of(server.id()).ok_or("no CPU figure for the server")?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let bots: Vec<_> = (1..=clients)
        .map(|player| {
            tokio::spawn(play(
                address,
                DEMO_KEY.as_bytes().to_vec(),
                player,
                deadline,
                BotOptions::default(),
            ))
        })
        .collect();
    let mut frames = 0u64;
    for bot in bots {
        frames += u64::from(bot.await??.frames);
    }
    let cpu_end = cpu_seconds_of(server.id()).ok_or("no CPU figure for the server")?;
    Ok((frames, cpu_end - cpu_start))
}
