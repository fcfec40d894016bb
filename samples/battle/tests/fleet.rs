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
//!
//! Each node is killed by its pid when the test ends; the tests run one at a time (a fleet of
//! three and its bots fill this machine's two cores).

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use garrison_battle::{
    bots::{BotOptions, BotReport, play},
    process::ServerProcess,
};
use garrison_cluster::fleet::{ActivationEvent, ActivationRecord, check_activations};

const KEY: &str = "fleet test key";
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

/// A fleet of three nodes.
struct Fleet {
    nodes: Vec<Option<ServerProcess>>,
    addresses: Vec<SocketAddr>,
    logs: Vec<PathBuf>,
    dir: PathBuf,
}

impl Fleet {
    fn start(test: &str, etcd: &str, redis: &str) -> Fleet {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let name = format!("fleet-{test}-{}-{nanos}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut fleet = Fleet {
            nodes: Vec::new(),
            addresses: Vec::new(),
            logs: Vec::new(),
            dir,
        };
        for index in 1..=3 {
            let log = fleet.dir.join(format!("activations-n{index}.log"));
            let node = ServerProcess::start(
                Command::new(env!("CARGO_BIN_EXE_garrison-battle"))
                    .args(["serve", "--listen", "127.0.0.1:0", "--overload", "none"])
                    .args(["--match-seconds", "600", "--key", KEY])
                    .args(["--store", redis, "--store-namespace", &name])
                    .args(["--cluster", &format!("etcd={etcd}"), "--fleet-name", &name])
                    .args(["--node-id", &format!("n{index}")])
                    .arg("--activation-log")
                    .arg(&log)
                    .env("RUST_LOG", "warn")
                    .stderr(Stdio::inherit()),
            )
            .expect("a node starts");
            fleet.addresses.push(node.address());
            fleet.nodes.push(Some(node));
            fleet.logs.push(log);
        }
        fleet
    }

    /// Every node has printed a status line with `shards=` adding up to all of them.
    fn settled(&self) -> bool {
        let owned: usize = self
            .nodes
            .iter()
            .flatten()
            .filter_map(|node| field(&node.last_line("fleet ")?, "shards"))
            .sum();
        owned == 1024
    }

    /// The live node holding the most rooms, by its last status line.
    fn busiest(&self) -> usize {
        (0..self.nodes.len())
            .filter_map(|index| {
                let line = self.nodes[index].as_ref()?.last_line("fleet ")?;
                Some((field(&line, "rooms")?, index))
            })
            .max()
            .expect("a node with rooms")
            .1
    }

    fn activation_log(&self) -> Vec<ActivationRecord> {
        self.logs
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .flat_map(|text| {
                text.lines()
                    .map(|line| {
                        ActivationRecord::parse(line, &["room", "matchmaker"])
                            .expect("an activation record")
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `key=value` field of a status line.
fn field(line: &str, key: &str) -> Option<usize> {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
}

/// Polls `condition` every 20 ms until it holds; fails naming `what` after `limit`.
fn until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !condition() {
        if start.elapsed() > limit {
            return Err(format!("{what}: not within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// 24 bots spread over the fleet until `deadline`, surviving their nodes going away.
fn bots(
    runtime: &tokio::runtime::Runtime,
    fleet: &Fleet,
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
    let mut fleet = Fleet::start("drain", &etcd, &redis);
    until("the fleet settles", Duration::from_secs(30), || {
        fleet.settled()
    })?;
    let runtime = runtime();
    let deadline = Instant::now() + Duration::from_secs(10);
    let bots = bots(&runtime, &fleet, deadline);
    // The scenario's own timing: the rooms play a while before the drain.
    std::thread::sleep(Duration::from_secs(4));
    let busiest = fleet.busiest();
    let node = fleet.nodes[busiest].take().expect("running");
    let rooms = field(&node.last_line("fleet ").unwrap_or_default(), "rooms").unwrap_or(0);
    let output = node.output();
    let pid = node.id();
    node.terminate(Duration::from_secs(30))
        .map_err(|error| format!("node {pid}'s graceful stop: {error}"))?;
    let drained = output.last_line("drained ");
    let reports = reports(&runtime, bots)?;
    let (replaced, redirects, failovers) = played("drain", &reports)?;
    println!(
        "  drain: node n{} with {rooms} rooms: {}",
        busiest + 1,
        drained.unwrap_or_else(|| "no drain line".into())
    );
    if replaced > 0 {
        return Err(format!(
            "{replaced} inputs were lost or late across the drain"
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
    check_activations(&fleet.activation_log(), &HashMap::new())?;
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
    let mut fleet = Fleet::start("kill", &etcd, &redis);
    until("the fleet settles", Duration::from_secs(30), || {
        fleet.settled()
    })?;
    let runtime = runtime();
    let deadline = Instant::now() + Duration::from_secs(14);
    let bots = bots(&runtime, &fleet, deadline);
    std::thread::sleep(Duration::from_secs(4));
    let busiest = fleet.busiest();
    let victim = format!("n{}", busiest + 1);
    fleet.nodes[busiest].take().expect("running").kill()?;
    let killed_at = unix_ms();
    let reports = reports(&runtime, bots)?;
    let (_, _, failovers) = played("kill", &reports)?;
    if failovers == 0 {
        return Err("no bot came back on another node".into());
    }
    // Each room the victim ran is back on a survivor: when, after the kill?
    let records = fleet.activation_log();
    let ran_there: Vec<&str> = records
        .iter()
        .filter(|record| record.node == victim && record.kind == "room")
        .map(|record| record.key.as_str())
        .collect();
    let mut back = Vec::new();
    for room in &ran_there {
        let again = records.iter().find_map(|record| match record.event {
            ActivationEvent::Activated { at_unix_ms }
                if record.key == *room && record.node != victim && at_unix_ms >= killed_at =>
            {
                Some(at_unix_ms - killed_at)
            }
            _ => None,
        });
        back.push(again.ok_or_else(|| format!("room {room} did not run again"))?);
    }
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
    check_activations(&records, &HashMap::from([(victim, killed_at)]))?;
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
    let fleet = Fleet::start("pause", &etcd, &redis);
    until("the fleet settles", Duration::from_secs(30), || {
        fleet.settled()
    })?;
    let runtime = runtime();
    let deadline = Instant::now() + Duration::from_secs(16);
    let bots = bots(&runtime, &fleet, deadline);
    std::thread::sleep(Duration::from_secs(4));
    let busiest = fleet.busiest();
    let paused = fleet.nodes[busiest].as_ref().expect("running");
    let victim = format!("n{}", busiest + 1);
    paused.signal("STOP")?;
    let stopped_at = unix_ms();
    // Past its 3 s lease: the others take its shards.
    std::thread::sleep(Duration::from_secs(5));
    paused.signal("CONT")?;
    let woke_at = unix_ms();
    let reports = reports(&runtime, bots)?;
    played("pause", &reports)?;
    let records = fleet.activation_log();
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
        return Err(format!(
            "node {victim} handled messages after its pause: {late:?}"
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
