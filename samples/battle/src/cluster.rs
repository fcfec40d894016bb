//! A fleet of battle nodes on loopback (feature `fleet`): [`LocalFleet`] starts `serve
//! --cluster` processes, and `garrison-battle cluster` plays bots across them while a chaos
//! switch drains or kills a node every few seconds and starts it again, then prints what each
//! node did.
//!
//! The demo starts its own etcd and Redis (on loopback, in a temporary directory, stopped by
//! their pids) when `etcd` and `redis-server` are installed and none is given; it says how to
//! install them when they are not.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;
use garrison_cluster::fleet::{ActivationEvent, ActivationRecord, check_activations};

use crate::{
    bots::{BotOptions, play},
    process::ServerProcess,
    report::Summary,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// `garrison-battle cluster`'s settings.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// etcd's client URL; without it, an `etcd` on the PATH is started for the run.
    #[arg(long)]
    pub etcd: Option<String>,
    /// Redis's URL; without it, a `redis-server` on the PATH is started for the run.
    #[arg(long)]
    pub redis: Option<String>,
    /// Nodes in the fleet.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Bots, spread over the nodes.
    #[arg(long, default_value_t = 48)]
    pub clients: u64,
    /// Seconds to play.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Every this many seconds a node goes away (a drain, then a kill, alternately) and is
    /// started again a second later; 0: never.
    #[arg(long, default_value_t = 8)]
    pub chaos_every: u64,
}

/// The key the demo's tickets are signed with.
const KEY: &str = "cluster demo key";

/// A fleet of `serve --cluster` processes on loopback, each killed by its pid when dropped.
pub struct LocalFleet {
    binary: PathBuf,
    etcd: String,
    redis: String,
    name: String,
    dir: PathBuf,
    /// Per node (n1, n2, ...): the running process, if any.
    pub nodes: Vec<Option<ServerProcess>>,
    /// Per node: its gateway (a restarted node listens where it did).
    pub addresses: Vec<SocketAddr>,
    extra: Vec<(String, String)>,
}

impl LocalFleet {
    /// Starts `count` nodes of `binary` (a `garrison-battle` built with `fleet`) on etcd at
    /// `etcd` and Redis at `redis`, under a fleet name of `label`'s and this process's own,
    /// with `extra` environment variables for each (`{node}` in a value is the node's id).
    ///
    /// # Errors
    /// When a node does not start.
    pub fn start(
        binary: &Path,
        label: &str,
        etcd: &str,
        redis: &str,
        count: usize,
        extra: &[(&str, &str)],
    ) -> Result<LocalFleet, Error> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let name = format!("fleet-{label}-{}-{nanos}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let mut fleet = LocalFleet {
            binary: binary.to_owned(),
            etcd: etcd.to_owned(),
            redis: redis.to_owned(),
            name,
            dir,
            nodes: Vec::new(),
            addresses: Vec::new(),
            extra: extra
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
        };
        for index in 0..count {
            let node = fleet.spawn(index, "127.0.0.1:0".parse()?)?;
            fleet.addresses.push(node.address());
            fleet.nodes.push(Some(node));
        }
        Ok(fleet)
    }

    /// Node `index`'s id (`n1`, `n2`, ...).
    pub fn id(index: usize) -> String {
        format!("n{}", index + 1)
    }

    fn spawn(&self, index: usize, listen: SocketAddr) -> Result<ServerProcess, Error> {
        let id = LocalFleet::id(index);
        let mut command = Command::new(&self.binary);
        command
            .args([
                "serve",
                "--listen",
                &listen.to_string(),
                "--overload",
                "none",
            ])
            .args(["--match-seconds", "600", "--key", KEY])
            .args(["--store", &self.redis, "--store-namespace", &self.name])
            .args(["--cluster", &format!("etcd={}", self.etcd)])
            .args(["--fleet-name", &self.name, "--node-id", &id])
            .arg("--activation-log")
            .arg(self.log_path(index))
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null());
        for (key, value) in &self.extra {
            command.env(key, value.replace("{node}", &id));
        }
        Ok(ServerProcess::start(&mut command)?)
    }

    fn log_path(&self, index: usize) -> PathBuf {
        self.dir
            .join(format!("activations-{}.log", LocalFleet::id(index)))
    }

    /// Starts node `index` again where it listened, after it went away.
    ///
    /// # Errors
    /// When it does not start.
    pub fn restart(&mut self, index: usize) -> Result<(), Error> {
        let node = self.spawn(index, self.addresses[index])?;
        self.nodes[index] = Some(node);
        Ok(())
    }

    /// Whether the running nodes' last status lines give out all 1,024 shards.
    pub fn settled(&self) -> bool {
        let owned: usize = self
            .nodes
            .iter()
            .flatten()
            .filter_map(|node| field(&node.last_line("fleet ")?, "shards"))
            .sum();
        owned == usize::from(garrison_cluster::DEFAULT_SHARDS)
    }

    /// Waits until [`LocalFleet::settled`], at most `limit`.
    ///
    /// # Errors
    /// When it does not settle in time.
    pub fn settle(&self, limit: Duration) -> Result<(), Error> {
        let start = Instant::now();
        while !self.settled() {
            if start.elapsed() > limit {
                return Err(format!("the fleet did not settle within {limit:?}").into());
            }
            // Polled with a deadline: the nodes report once a second.
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The running node holding the most rooms, by its last status line.
    pub fn busiest(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter_map(|index| {
                let line = self.nodes[index].as_ref()?.last_line("fleet ")?;
                Some((field(&line, "rooms")?, index))
            })
            .max()
            .map(|(_, index)| index)
    }

    /// Every node's last status line, by node.
    pub fn status(&self) -> Vec<Option<String>> {
        self.nodes
            .iter()
            .map(|node| node.as_ref()?.last_line("fleet "))
            .collect()
    }

    /// The nodes' activation logs, read back.
    ///
    /// # Errors
    /// A line that is not an activation record.
    pub fn activation_log(&self) -> Result<Vec<ActivationRecord>, Error> {
        let mut records = Vec::new();
        for index in 0..self.nodes.len() {
            let Ok(text) = std::fs::read_to_string(self.log_path(index)) else {
                continue;
            };
            for line in text.lines() {
                records.push(ActivationRecord::parse(line, &["room", "matchmaker"])?);
            }
        }
        Ok(records)
    }
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `key=value` field of a status line.
pub fn field(line: &str, key: &str) -> Option<usize> {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
}

/// For each room `victim` was running at `since` (by the activation logs: activated there and
/// not departed before; milliseconds since the Unix epoch), when it ran again on another node,
/// in milliseconds after `since`.
pub fn back_after(records: &[ActivationRecord], victim: &str, since: u64) -> Vec<Option<u64>> {
    let mut latest: HashMap<&str, (u64, bool)> = HashMap::new();
    for record in records
        .iter()
        .filter(|record| record.node == victim && record.kind == "room")
    {
        let (at, running) = match record.event {
            ActivationEvent::Activated { at_unix_ms } => (at_unix_ms, true),
            ActivationEvent::Departed {
                last_handled_unix_ms,
                ..
            } => (last_handled_unix_ms, false),
        };
        if at <= since {
            let entry = latest.entry(record.key.as_str()).or_insert((at, running));
            if at >= entry.0 {
                *entry = (at, running);
            }
        }
    }
    let mut rooms: Vec<&str> = latest
        .into_iter()
        .filter(|(_, (_, running))| *running)
        .map(|(room, _)| room)
        .collect();
    rooms.sort_unstable();
    rooms
        .into_iter()
        .map(|room| {
            records
                .iter()
                .filter_map(|record| match record.event {
                    ActivationEvent::Activated { at_unix_ms }
                        if record.key == room && record.node != victim && at_unix_ms >= since =>
                    {
                        Some(at_unix_ms - since)
                    }
                    _ => None,
                })
                .min()
        })
        .collect()
}

/// A service the demo started (etcd or Redis), stopped by its pid when dropped.
struct Service {
    child: Child,
    dir: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first of `names` on the PATH (or an absolute path that exists).
fn installed(names: &[&str]) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        let direct = PathBuf::from(name);
        if direct.is_absolute() && direct.exists() {
            return Some(direct);
        }
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.exists())
    })
}

/// Whether something answers on TCP at `address`.
fn answers(address: &str) -> bool {
    address.parse::<SocketAddr>().is_ok_and(|address| {
        std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
    })
}

fn until_answers(what: &str, address: &str, child: &mut Child) -> Result<(), Error> {
    let start = Instant::now();
    while !answers(address) {
        if let Some(status) = child.try_wait()? {
            return Err(format!("{what} exited ({status}) before it listened on {address}").into());
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(format!("{what} did not listen on {address} within 30 s").into());
        }
        // Polled with a deadline: a fresh server has no readiness signal to wait on.
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn temp_dir(label: &str) -> Result<PathBuf, Error> {
    let dir = std::env::temp_dir().join(format!("garrison-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// etcd: the one given, or one started from the PATH on 127.0.0.1:23791.
fn etcd(given: Option<&str>) -> Result<(String, Option<Service>), Error> {
    if let Some(url) = given {
        return Ok((url.to_owned(), None));
    }
    let Some(binary) = installed(&["etcd", "garrison-etcd"]) else {
        return Err(
            "the cluster demo needs etcd (3.4 or later): install Debian's `etcd-server` \
                    (apt-get install etcd-server), or build it with Go (see .ci/run), or give a \
                    running one with --etcd http://HOST:PORT"
                .into(),
        );
    };
    let dir = temp_dir("demo-etcd")?;
    let mut child = Command::new(binary)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--name", "garrison-demo"])
        .args(["--listen-client-urls", "http://127.0.0.1:23791"])
        .args(["--advertise-client-urls", "http://127.0.0.1:23791"])
        .args(["--listen-peer-urls", "http://127.0.0.1:23801"])
        .args(["--initial-advertise-peer-urls", "http://127.0.0.1:23801"])
        .args(["--initial-cluster", "garrison-demo=http://127.0.0.1:23801"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    until_answers("etcd", "127.0.0.1:23791", &mut child)?;
    Ok((
        "http://127.0.0.1:23791".to_owned(),
        Some(Service { child, dir }),
    ))
}

/// Redis: the one given, or one started from the PATH on 127.0.0.1:16399.
fn redis(given: Option<&str>) -> Result<(String, Option<Service>), Error> {
    if let Some(url) = given {
        return Ok((url.to_owned(), None));
    }
    let Some(binary) = installed(&["redis-server"]) else {
        return Err(
            "the cluster demo needs Redis: install Debian's `redis-server` (apt-get \
                    install redis-server), or give a running one with --redis redis://HOST:PORT"
                .into(),
        );
    };
    let dir = temp_dir("demo-redis")?;
    let mut child = Command::new(binary)
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "16399",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    until_answers("redis-server", "127.0.0.1:16399", &mut child)?;
    Ok((
        "redis://127.0.0.1:16399".to_owned(),
        Some(Service { child, dir }),
    ))
}

/// What happened to one node during the demo.
#[derive(Debug, Default)]
struct Story {
    drains: Vec<String>,
    /// When it was killed (milliseconds since the Unix epoch).
    kills: Vec<u64>,
}

/// `garrison-battle cluster`: a fleet on loopback, bots across it, and chaos (see the module
/// documentation).
///
/// # Errors
/// When etcd or Redis is missing, a node does not start, or the run fails its checks.
pub async fn main(args: ClusterArgs) -> Result<(), Error> {
    let (etcd, _etcd) = etcd(args.etcd.as_deref())?;
    let (redis, _redis) = redis(args.redis.as_deref())?;
    let binary = std::env::current_exe()?;
    let nodes = args.nodes.max(2);
    let mut fleet = tokio::task::block_in_place(|| {
        LocalFleet::start(&binary, "demo", &etcd, &redis, nodes, &[])
    })?;
    tokio::task::block_in_place(|| fleet.settle(Duration::from_secs(30)))?;
    println!(
        "fleet of {nodes} nodes on etcd {etcd} and Redis {redis}: {}",
        fleet
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let everywhere: Arc<[SocketAddr]> = Arc::from(fleet.addresses.clone());
    let bots: Vec<_> = (1..=args.clients)
        .map(|player| {
            let options = BotOptions {
                server_restarts: Some(Duration::from_secs(20)),
                fleet: everywhere.clone(),
                silence: Some(Duration::from_millis(1_500)),
                ..BotOptions::default()
            };
            let address = everywhere[player as usize % everywhere.len()];
            tokio::spawn(play(
                address,
                KEY.as_bytes().to_vec(),
                player,
                deadline,
                options,
            ))
        })
        .collect();
    let mut stories: HashMap<usize, Story> = HashMap::new();
    let mut drain_next = true;
    let mut next_chaos = start + Duration::from_secs(args.chaos_every);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < deadline {
        ticker.tick().await;
        let second = start.elapsed().as_secs();
        let rooms: Vec<String> = fleet
            .status()
            .iter()
            .enumerate()
            .map(|(index, line)| {
                let id = LocalFleet::id(index);
                match line {
                    Some(line) if fleet.nodes[index].is_some() => format!(
                        "{id} shards {:>4} rooms {:>2}",
                        field(line, "shards").unwrap_or(0),
                        field(line, "rooms").unwrap_or(0)
                    ),
                    _ => format!("{id} (down)"),
                }
            })
            .collect();
        println!("{second:>3} s  {}", rooms.join("  |  "));
        if args.chaos_every == 0
            || Instant::now() < next_chaos
            || Instant::now() + Duration::from_secs(3) > deadline
        {
            continue;
        }
        next_chaos += Duration::from_secs(args.chaos_every);
        let Some(victim) = fleet.busiest() else {
            continue;
        };
        let id = LocalFleet::id(victim);
        let node = fleet.nodes[victim].take().expect("running");
        if drain_next {
            let output = node.output();
            let pid = node.id();
            tokio::task::block_in_place(|| node.terminate(Duration::from_secs(30)))
                .map_err(|error| format!("node {id} ({pid}) did not stop: {error}"))?;
            let line = output.last_line("drained ").unwrap_or_default();
            let took = field(&line, "took_ms").unwrap_or(0);
            let handoff = field(&line, "handoff_us").unwrap_or(0);
            println!(
                "      chaos: {id} drained in {took} ms (hand-off {:.1} ms, {} entities), started again",
                handoff as f64 / 1000.0,
                field(&line, "handed_off").unwrap_or(0)
            );
            stories.entry(victim).or_default().drains.push(format!(
                "drained in {took} ms (hand-off {:.1} ms)",
                handoff as f64 / 1000.0
            ));
        } else {
            let killed_at = unix_ms();
            node.kill()?;
            println!(
                "      chaos: {id} killed (SIGKILL); its rooms run again elsewhere once its lease expires"
            );
            // Started again at once: it rejoins under a new lease.
            stories.entry(victim).or_default().kills.push(killed_at);
        }
        drain_next = !drain_next;
        tokio::task::block_in_place(|| fleet.restart(victim))?;
    }
    let mut reports = Vec::new();
    for bot in bots {
        reports.push(match bot.await {
            Ok(report) => report,
            Err(error) => Err(crate::bots::BotError::Crashed(error.to_string())),
        });
    }
    let summary = Summary::new(&reports, None, None, args.duration as f64);

    println!("\n{}", summary.table());
    let records = fleet.activation_log()?;
    let deaths: HashMap<String, Vec<u64>> = stories
        .iter()
        .map(|(index, story)| (LocalFleet::id(*index), story.kills.clone()))
        .collect();
    println!("\nper node:");
    for (index, line) in fleet.status().iter().enumerate() {
        let id = LocalFleet::id(index);
        let line = line.clone().unwrap_or_default();
        let story = stories.remove(&index).unwrap_or_default();
        let mut failovers = Vec::new();
        for &at in &story.kills {
            let back: Vec<String> = back_after(&records, &id, at)
                .into_iter()
                .map(|back| back.map_or("not back".into(), |ms| format!("{ms} ms")))
                .collect();
            failovers.push(format!(
                "killed; its rooms back after [{}]",
                back.join(", ")
            ));
        }
        println!(
            "  {id}: shards {} rooms {} players {} | hand-offs {} ({} entities, last {:.1} ms) | \
             rooms run here from a node gone {} | {}{}",
            field(&line, "shards").unwrap_or(0),
            field(&line, "rooms").unwrap_or(0),
            field(&line, "players").unwrap_or(0),
            field(&line, "handoffs").unwrap_or(0),
            field(&line, "handed_off").unwrap_or(0),
            field(&line, "last_handoff_us").unwrap_or(0) as f64 / 1000.0,
            field(&line, "recovered").unwrap_or(0),
            story.drains.join("; "),
            if failovers.is_empty() {
                String::new()
            } else {
                format!(" {}", failovers.join("; "))
            },
        );
    }
    let mut problems = summary.problems();
    match check_activations(&records, &deaths) {
        Ok(check) => println!(
            "activation logs: {} runs, {} entities moved between nodes, none ran on two at once",
            check.runs, check.moved
        ),
        Err(overlap) => problems.push(format!("activation logs: {overlap}")),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("the run failed its checks: {}", problems.join("; ")).into())
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
