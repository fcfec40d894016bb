//! The battle as a fleet: three `garrison-battle serve --cluster` processes on loopback, on a
//! real etcd and a real Redis (`GARRISON_ETCD_ENDPOINT`, `GARRISON_REDIS_URL`; `.ci/run` starts
//! both), with bots playing across them, following their redirects to their rooms' nodes.
//!
//! - A node **drained** (SIGTERM: its graceful stop hands every shard over first): its rooms
//!   play on on the other nodes with no input lost and no desync.
//! - A node **killed** (SIGKILL): its rooms run again on the others from their snapshots and
//!   logs within 5 s of the kill, and every bot resumes with no desync.
//! - A node **paused** (SIGSTOP) past its lease, then resumed: the others take its rooms, and
//!   once awake it runs nothing of them (checked from the three nodes' activation logs: no room
//!   ran on two nodes at once).
//! - With a real Jaeger (`GARRISON_JAEGER_QUERY`, OTLP on 127.0.0.1:4317): a traced `Join`
//!   leaves one trace across the nodes it crossed (the player's node, the matchmaker's, the
//!   room's).
//!
//! Each node is killed by its pid when the test ends; the tests run one at a time (a fleet of
//! three and its bots fill this machine's two cores).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use garrison_battle::{
    bots::{BotOptions, BotReport, play},
    cluster::{LocalFleet, back_after, field},
};
use garrison_cluster::fleet::{ActivationEvent, ActivationRecord, check_activations};

/// The key `LocalFleet`'s nodes sign tickets with.
const KEY: &str = "cluster demo key";
const BOTS: u64 = 24;
/// The tests share the machine: one fleet at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn settings() -> Option<(String, String)> {
    match (
        std::env::var("GARRISON_ETCD_ENDPOINT"),
        std::env::var("GARRISON_REDIS_URL"),
    ) {
        (Ok(etcd), Ok(redis)) => Some((etcd, redis)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs these tests against a real etcd and Redis: .ci/run sets \
                 GARRISON_ETCD_ENDPOINT and GARRISON_REDIS_URL"
            );
            eprintln!("skipped: set GARRISON_ETCD_ENDPOINT and GARRISON_REDIS_URL (see README)");
            None
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn fleet(test: &str, etcd: &str, redis: &str) -> Result<LocalFleet, String> {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_garrison-battle"));
    let fleet =
        LocalFleet::start(binary, test, etcd, redis, 3, &[]).map_err(|error| error.to_string())?;
    fleet
        .settle(Duration::from_secs(30))
        .map_err(|error| error.to_string())?;
    Ok(fleet)
}

/// 24 bots spread over the fleet until `deadline`, surviving their nodes going away.
fn bots(
    runtime: &tokio::runtime::Runtime,
    fleet: &LocalFleet,
    deadline: Instant,
) -> Vec<tokio::task::JoinHandle<Result<BotReport, garrison_battle::bots::BotError>>> {
    let everywhere: Arc<[SocketAddr]> = Arc::from(fleet.addresses.clone());
    (1..=BOTS)
        .map(|player| {
            let options = BotOptions {
                server_restarts: Some(Duration::from_secs(20)),
                fleet: everywhere.clone(),
                silence: Some(Duration::from_millis(1_500)),
                ..BotOptions::default()
            };
            let address = fleet.addresses[player as usize % fleet.addresses.len()];
            runtime.spawn(play(
                address,
                KEY.as_bytes().to_vec(),
                player,
                deadline,
                options,
            ))
        })
        .collect()
}

fn reports(
    runtime: &tokio::runtime::Runtime,
    bots: Vec<tokio::task::JoinHandle<Result<BotReport, garrison_battle::bots::BotError>>>,
) -> Result<Vec<BotReport>, String> {
    runtime.block_on(async {
        let mut reports = Vec::new();
        for bot in bots {
            match bot.await {
                Ok(Ok(report)) => reports.push(report),
                Ok(Err(error)) => return Err(format!("a bot failed: {error}")),
                Err(error) => return Err(format!("a bot crashed: {error}")),
            }
        }
        Ok(reports)
    })
}

/// No desync, every bot played and verified checksums; returns (inputs replaced, redirects
/// followed, bots that came back on another node).
fn played(label: &str, reports: &[BotReport]) -> Result<(u32, u32, u32), String> {
    for (player, report) in (1..).zip(reports) {
        if report.desyncs != 0 || report.delta_mismatches != 0 || report.mismatched != 0 {
            return Err(format!("{label}: bot {player} desynced: {report:?}"));
        }
        if report.verified == 0 || report.frames == 0 {
            return Err(format!("{label}: bot {player} did not play: {report:?}"));
        }
    }
    let replaced = reports.iter().map(|report| report.replaced).sum();
    let redirects = reports.iter().map(|report| report.redirects).sum();
    let failovers = reports.iter().map(|report| report.failovers).sum();
    let verified: u32 = reports.iter().map(|report| report.verified).sum();
    println!(
        "  {label}: {} bots, {verified} checksums verified, 0 desyncs; inputs replaced {replaced}, \
         redirects followed {redirects}, came back on another node {failovers}",
        reports.len()
    );
    Ok((replaced, redirects, failovers))
}

fn activations(fleet: &LocalFleet) -> Result<Vec<ActivationRecord>, String> {
    fleet.activation_log().map_err(|error| error.to_string())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn a_drained_node_hands_its_rooms_over_and_no_input_is_lost() -> Result<(), String> {
    let Some((etcd, redis)) = settings() else {
        return Ok(());
    };
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let mut fleet = fleet("drain", &etcd, &redis)?;
    let runtime = runtime();
    let deadline = Instant::now() + Duration::from_secs(10);
    let bots = bots(&runtime, &fleet, deadline);
    // The scenario's own timing: the rooms play a while before the drain.
    std::thread::sleep(Duration::from_secs(4));
    let busiest = fleet.busiest().ok_or("no node has rooms")?;
    let node = fleet.nodes[busiest].take().expect("running");
    let rooms = field(&node.last_line("fleet ").unwrap_or_default(), "rooms").unwrap_or(0);
    let output = node.output();
    let pid = node.id();
    node.terminate(Duration::from_secs(30))
        .map_err(|error| format!("node {pid}'s graceful stop: {error}"))?;
    let drained = output.last_line("drained ");
    let reports = reports(&runtime, bots)?;
    let (late, redirects, failovers) = played("drain", &reports)?;
    let drained = drained.ok_or("the drained node printed no drain line")?;
    println!(
        "  drain: node n{} with {rooms} rooms: {drained}",
        busiest + 1
    );
    // Every input a bot sent reached a room: the drained node's rooms before the hand-off, the
    // others' after (kept for them while the hand-off ran, or sent on by the drained node). The
    // survivors report their counts every second: polled until they add up, with a deadline.
    let sent: usize = reports
        .iter()
        .map(|report| report.inputs_sent as usize)
        .sum();
    let before = field(&drained, "inputs").unwrap_or(0);
    let started = Instant::now();
    let handled = loop {
        let handled = before
            + fleet
                .status()
                .iter()
                .flatten()
                .filter_map(|line| field(line, "inputs"))
                .sum::<usize>();
        if handled >= sent || started.elapsed() > Duration::from_secs(5) {
            break handled;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "  drain: inputs sent {sent}, handled by a room {handled}; {late} ran late (the bots' \
         redirect and catch-up)"
    );
    if handled < sent {
        return Err(format!(
            "{} inputs were lost across the drain",
            sent - handled
        ));
    }
    if redirects == 0 {
        return Err("no bot was redirected".into());
    }
    if failovers > 0 {
        return Err(format!(
            "{failovers} bots lost their node and came back elsewhere: a drain redirects them"
        ));
    }
    check_activations(&activations(&fleet)?, &HashMap::new())?;
    Ok(())
}

#[test]
fn a_killed_node_s_rooms_are_back_within_five_seconds_with_no_desync() -> Result<(), String> {
    let Some((etcd, redis)) = settings() else {
        return Ok(());
    };
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let mut fleet = fleet("kill", &etcd, &redis)?;
    let runtime = runtime();
    let deadline = Instant::now() + Duration::from_secs(14);
    let bots = bots(&runtime, &fleet, deadline);
    std::thread::sleep(Duration::from_secs(4));
    let busiest = fleet.busiest().ok_or("no node has rooms")?;
    let victim = LocalFleet::id(busiest);
    fleet.nodes[busiest].take().expect("running").kill()?;
    let killed_at = unix_ms();
    let reports = reports(&runtime, bots)?;
    let (_, _, failovers) = played("kill", &reports)?;
    if failovers == 0 {
        return Err("no bot came back on another node".into());
    }
    // Each room the victim ran is back on a survivor: when, after the kill?
    let records = activations(&fleet)?;
    let mut back = back_after(&records, &victim, killed_at)
        .into_iter()
        .collect::<Option<Vec<u64>>>()
        .ok_or("a room of the killed node did not run again")?;
    back.sort_unstable();
    println!(
        "  kill: node {victim}'s {} rooms back after {back:?} ms",
        back.len()
    );
    if back.is_empty() || back.iter().any(|&ms| ms > 5_000) {
        return Err(format!(
            "goal: every room back within 5 s of the kill, got {back:?} ms"
        ));
    }
    check_activations(&records, &HashMap::from([(victim, vec![killed_at])]))?;
    Ok(())
}

#[test]
fn a_node_paused_past_its_lease_runs_nothing_when_it_wakes() -> Result<(), String> {
    let Some((etcd, redis)) = settings() else {
        return Ok(());
    };
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let fleet = fleet("pause", &etcd, &redis)?;
    let runtime = runtime();
    let deadline = Instant::now() + Duration::from_secs(16);
    let bots = bots(&runtime, &fleet, deadline);
    std::thread::sleep(Duration::from_secs(4));
    let busiest = fleet.busiest().ok_or("no node has rooms")?;
    let paused = fleet.nodes[busiest].as_ref().expect("running");
    let victim = LocalFleet::id(busiest);
    paused.signal("STOP")?;
    let stopped_at = unix_ms();
    // Past its 3 s lease: the others take its shards.
    std::thread::sleep(Duration::from_secs(5));
    paused.signal("CONT")?;
    let woke_at = unix_ms();
    let reports = reports(&runtime, bots)?;
    played("pause", &reports)?;
    let records = activations(&fleet)?;
    // Whatever it ran, it left by the lease (lapsed or released) and handled nothing after
    // its pause.
    let late: Vec<&ActivationRecord> = records
        .iter()
        .filter(|record| {
            record.node == victim
                && matches!(record.event, ActivationEvent::Departed { last_handled_unix_ms, .. }
                    if last_handled_unix_ms > stopped_at + 50 && last_handled_unix_ms < woke_at + 60_000)
        })
        .collect();
    if !late.is_empty() {
        let history: Vec<&ActivationRecord> = records
            .iter()
            .filter(|record| late.iter().any(|late| late.key == record.key))
            .collect();
        return Err(format!(
            "node {victim} handled messages after its pause (paused at {stopped_at}, woke at \
             {woke_at} ms): {late:?}; those keys' records: {history:?}"
        ));
    }
    let check = check_activations(&records, &HashMap::new())?;
    println!(
        "  pause: node {victim} paused {} ms; {} rooms moved, no room ran on two nodes at once",
        woke_at - stopped_at,
        check.moved
    );
    if check.moved == 0 {
        return Err("no room moved off the paused node".into());
    }
    Ok(())
}

#[test]
fn a_join_forwarded_across_nodes_is_one_trace_in_jaeger() -> Result<(), String> {
    use garrison_runtime::telemetry::{self, OtlpProtocol, TelemetryConfig};

    let Some((etcd, redis)) = settings() else {
        return Ok(());
    };
    let Ok(query) = std::env::var("GARRISON_JAEGER_QUERY") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs this test against a real Jaeger: .ci/run sets GARRISON_JAEGER_QUERY"
        );
        eprintln!("skipped: set GARRISON_JAEGER_QUERY (and run Jaeger's OTLP on 127.0.0.1:4317)");
        return Ok(());
    };
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let tag = format!("{}-{nanos}", std::process::id());
    let service = format!("fleet-{tag}-{{node}}");
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_garrison-battle"));
    let mut fleet = LocalFleet::start(
        binary,
        "traces",
        &etcd,
        &redis,
        3,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_SERVICE_NAME", &service),
        ],
    )
    .map_err(|error| error.to_string())?;
    fleet
        .settle(Duration::from_secs(30))
        .map_err(|error| error.to_string())?;
    let runtime = runtime();
    let bots_service = format!("fleet-bots-{tag}");
    let guard = runtime.block_on(async {
        telemetry::install(&TelemetryConfig {
            service_name: bots_service.clone(),
            endpoint: Some("http://127.0.0.1:4317".into()),
            protocol: OtlpProtocol::Grpc,
            sample_ratio: 1.0,
            log_filter: "warn".into(),
            trace_filter: "info".into(),
        })
        .map_err(|error| error.to_string())
    })?;
    let deadline = Instant::now() + Duration::from_secs(4);
    let everywhere: Arc<[SocketAddr]> = Arc::from(fleet.addresses.clone());
    let bots: Vec<_> = (1..=8u64)
        .map(|player| {
            let options = BotOptions {
                trace: true,
                fleet: everywhere.clone(),
                server_restarts: Some(Duration::from_secs(10)),
                ..BotOptions::default()
            };
            let address = everywhere[player as usize % everywhere.len()];
            runtime.spawn(play(
                address,
                KEY.as_bytes().to_vec(),
                player,
                deadline,
                options,
            ))
        })
        .collect();
    let reports = reports(&runtime, bots)?;
    played("traces", &reports)?;
    runtime.block_on(guard.flush());
    // The nodes export on their own; a graceful stop flushes what they hold.
    for index in 0..fleet.nodes.len() {
        if let Some(node) = fleet.nodes[index].take() {
            node.terminate(Duration::from_secs(30))?;
        }
    }
    let nodes: Vec<String> = (0..3)
        .map(|index| format!("fleet-{tag}-{}", LocalFleet::id(index)))
        .collect();
    // Jaeger indexes what it received within a moment; polled with a deadline.
    let started = Instant::now();
    let crossing = loop {
        let url = format!(
            "{query}/api/traces?service={bots_service}&operation=battle.bot.join&limit=1000&lookback=1h"
        );
        let traces: serde_json::Value = ureq::get(&url)
            .timeout(Duration::from_secs(30))
            .call()
            .map_err(|error| format!("GET {url}: {error}"))?
            .into_json()
            .map_err(|error| error.to_string())?;
        let crossing = traces["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|trace| {
                let services: std::collections::BTreeSet<String> = trace["processes"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(_, process)| process["serviceName"].as_str())
                    .filter(|name| nodes.iter().any(|node| node == name))
                    .map(str::to_owned)
                    .collect();
                services
            })
            .max_by_key(std::collections::BTreeSet::len)
            .unwrap_or_default();
        if crossing.len() >= 2 || started.elapsed() > Duration::from_secs(30) {
            break crossing;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("  traces: a bot's join crossed {crossing:?} in one trace");
    if crossing.len() < 2 {
        return Err(format!(
            "no join's trace spans two nodes (widest: {crossing:?})"
        ));
    }
    Ok(())
}
