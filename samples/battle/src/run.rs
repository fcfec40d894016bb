//! Running bots against a battle server: the `demo` command and the `battle-bots` binary.
//!
//! With no `--server` the server runs in-process on loopback; chaos switches crash rooms (in
//! process only) and drop a share of the bots' connections, which reconnect and resume. A sweep
//! runs one load after another and prints the source's table shape beside its own rows, then
//! draws the curve to an SVG.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use clap::Args;
use garrison_runtime::{
    clock::{cpu_seconds_of, process_cpu_seconds},
    gateway::GatewayConfig,
};
use tokio::sync::Notify;

use crate::{
    bots::{BotError, BotOptions, play},
    process::ServerProcess,
    proto::Updates,
    report::Summary,
    server::{BattleServer, ServerConfig},
};

/// The key tickets are signed with when nothing else is given (loopback demos only).
pub const DEMO_KEY: &str = "demo ticket key";

/// The bots' settings (shared by `garrison-battle demo` and `battle-bots`).
#[derive(Args, Debug, Clone)]
pub struct BotArgs {
    /// Bot clients.
    #[arg(long, default_value_t = 64)]
    pub clients: u64,
    /// Players per room (the in-process server's setting; a remote one has its own).
    #[arg(long, default_value_t = 8)]
    pub room_size: usize,
    /// Inputs each bot sends per second (at most the frame rate, 60).
    #[arg(long, default_value_t = 60)]
    pub input_rate: u32,
    /// How many times a second, on average, each bot changes its buttons (it sends them at
    /// `--input-rate` whether they changed or not); 60: new random buttons with every input.
    #[arg(long, default_value_t = crate::bots::DEFAULT_BUTTON_CHANGES)]
    pub button_changes: u32,
    /// Percentage of the bots that ask for every frame's field delta as well (as a spectator or
    /// a browser would, or to check every frame); the rest get the compact inputs and check the
    /// checksums.
    #[arg(long, default_value_t = 0)]
    pub full_updates_percent: u32,
    /// Seconds to play (per point in a sweep).
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// A running battle server's TCP address (`garrison-battle serve`); without it the server
    /// runs in this process.
    #[arg(long)]
    pub server: Option<SocketAddr>,
    /// Every gateway of a fleet of servers (`serve --cluster`), comma-separated: the bots
    /// spread over them, follow their redirects to their rooms' nodes, and when a node goes
    /// away come back on the next (implies `--server` is the first when it is not given).
    #[arg(long, value_delimiter = ',')]
    pub fleet: Vec<SocketAddr>,
    /// While matched, a server that sends a bot nothing for this many milliseconds counts as
    /// gone (a paused node): the bot moves to the next one of `--fleet`; 0: never.
    #[arg(long, default_value_t = 0)]
    pub silence_ms: u64,
    /// The key tickets are signed with (must match the server's).
    #[arg(long, default_value = DEMO_KEY)]
    pub key: String,
    /// Crash every room every N seconds (in-process server only); 0 never.
    #[arg(long, default_value_t = 0)]
    pub room_panic_every: u64,
    /// Percentage of the bots whose connection is dropped every `--drop-every` seconds; each
    /// reconnects after `--away-ms` and resumes.
    #[arg(long, default_value_t = 0)]
    pub drop_percent: u32,
    /// Seconds between connection drops.
    #[arg(long, default_value_t = 5)]
    pub drop_every: u64,
    /// How long a dropped bot stays away, milliseconds.
    #[arg(long, default_value_t = 500)]
    pub away_ms: u64,
    /// Send each input inside a span whose W3C trace context rides in the frame, so the
    /// server's spans join the bot's trace (exported when `OTEL_EXPORTER_OTLP_ENDPOINT` is set).
    #[arg(long)]
    pub trace_inputs: bool,
    /// Print one JSON object on the last line as well.
    #[arg(long)]
    pub json: bool,
    /// Run these client counts one after another (e.g. `10,100,500,1000,2000`) and print the
    /// decay table beside the source's rows.
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<u64>,
    /// Where a sweep draws its curve.
    #[arg(long, default_value = "battle-sweep.svg")]
    pub plot: PathBuf,
    /// The first player id (runs against one remote server need disjoint ids).
    #[arg(long, default_value_t = 1)]
    pub first_player: u64,
    /// Run the server as a child process from this shell command (it must print `listening on
    /// ADDRESS` once it accepts players, as `garrison-battle serve` does) and play against it.
    #[arg(long)]
    pub spawn_server: Option<String>,
    /// Restart the spawned server every N seconds (0: never); the bots come back to it.
    #[arg(long, default_value_t = 0)]
    pub restart_server_every: u64,
    /// How the spawned server is restarted: `kill` (SIGKILL) or `graceful` (SIGTERM).
    #[arg(long, default_value = "kill", value_parser = ["kill", "graceful"])]
    pub restart_mode: String,
    /// Keep the in-process server's matches in a redb store in this directory (by default it
    /// keeps nothing beyond the process).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Frames between two snapshots of a room on the in-process server (the log in between).
    #[arg(long, default_value_t = crate::room::SNAPSHOT_EVERY)]
    pub snapshot_every: u32,
    /// When the server goes away (restarted gracefully with `Close 31`, or killed), keep
    /// reconnecting for this many seconds and resume the match; 0: a lost server is an error.
    #[arg(long, default_value_t = 0)]
    pub survive_restarts: u64,
    /// Seconds a match lasts on the in-process server; then its result is announced, the room
    /// released, and the bots join again.
    #[arg(long, default_value_t = 20)]
    pub match_seconds: u64,
    /// The in-process server's overload protection: `none`, `adaptive` (Garrison's limit on
    /// players in play: joins shed first), or `breaker` (the source's fixed QPS + P99 breaker,
    /// with `--breaker-base-qps`).
    #[arg(long, default_value = "none", value_parser = ["none", "adaptive", "breaker"])]
    pub overload: String,
    /// The request rate the breaker's score is relative to (`--overload breaker`).
    #[arg(long, default_value_t = 30_000.0)]
    pub breaker_base_qps: f64,
    /// The pid of the `--server` (on this machine), so its CPU is measured beside the bots'.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Capacity mode: `START,STEP,MAX` clients. Runs `START`, `START + STEP`, ... (each for
    /// `--duration`, a spawned server started afresh for each) until a step breaks (P99 over
    /// `--capacity-p99-ms`, frame deviation, a desync or a failed bot) or `MAX`, and prints the
    /// most clients that held with the server's CPU per client-second.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub capacity: Vec<u64>,
    /// The P99 input -> broadcast latency (beyond the input delay) a capacity step must keep.
    /// An idle server gives about one tick (the wait for the next frame); the default, two
    /// ticks at 60 Hz, allows one tick more.
    #[arg(long, default_value_t = 33.3)]
    pub capacity_p99_ms: f64,
    /// The frame deviation a capacity step may show (the goal is 0).
    #[arg(long, default_value_t = 0)]
    pub capacity_deviation: u32,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The server's settings (`garrison-battle serve`).
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// The TCP address players connect to.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Players per room.
    #[arg(long, default_value_t = 8)]
    pub room_size: usize,
    /// The key tickets are signed with: from configuration, never made up per process, so the
    /// tickets players hold stay valid across a restart.
    #[arg(long, env = "GARRISON_TICKET_KEY", default_value = DEMO_KEY)]
    pub key: String,
    /// Seconds a match lasts.
    #[arg(long, default_value_t = 180)]
    pub match_seconds: u64,
    /// Where matches and seats are kept (an embedded redb database in this directory), so a
    /// restart resumes every match at the frame it stopped on.
    #[arg(long, default_value = "garrison-data")]
    pub data_dir: PathBuf,
    /// Keep state in Redis instead (`redis://127.0.0.1:6379`), for a fleet of nodes.
    #[arg(long)]
    pub store: Option<String>,
    /// The Redis key namespace (with `--store`).
    #[arg(long, default_value = "garrison")]
    pub store_namespace: String,
    /// Keep nothing beyond the process (a killed server loses its matches).
    #[arg(long)]
    pub memory_only: bool,
    /// Serve Prometheus metrics (`/metrics`) and health probes (`/healthz`, `/readyz`) on this
    /// address; off unless given.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Seconds between summaries of the top crash causes in the log (only when a crash
    /// happened since the last one).
    #[arg(long, default_value_t = 60)]
    pub cause_summary_secs: u64,
    /// Overload protection: `adaptive` (joins are shed with a retry-after while the rooms run
    /// late; inputs never), `breaker` (the source's fixed breaker, with `--breaker-base-qps`)
    /// or `none`.
    #[arg(long, default_value = "adaptive", value_parser = ["none", "adaptive", "breaker"])]
    pub overload: String,
    /// The request rate the breaker's score is relative to (`--overload breaker`).
    #[arg(long, default_value_t = 30_000.0)]
    pub breaker_base_qps: f64,
    /// Also accept players over WebSocket on this address (one frame per binary message).
    #[arg(long)]
    pub ws_listen: Option<SocketAddr>,
    /// Serve the browser client's page on this address (needs `--ws-listen`).
    #[arg(long, requires = "ws_listen")]
    pub web: Option<SocketAddr>,
    /// The page's compiled scripts (`npm ci && npm run build` in the TypeScript client).
    #[arg(long, default_value = "samples/battle/clients/typescript/dist/src")]
    pub web_js: PathBuf,
    /// DEVELOPMENT ONLY, never in production: `GET /dev/ticket` on `--web` mints a ticket for a
    /// new player to whoever asks.
    #[arg(long, requires = "web")]
    pub dev_tickets: bool,
    /// Spectators a room takes (a client's `Watch` beyond is refused as busy; 0: none).
    #[arg(long, default_value_t = DEFAULT_SPECTATORS_PER_ROOM)]
    pub spectators_per_room: usize,
    /// Run as a node of a fleet: `etcd=http://127.0.0.1:2379` (comma-separated URLs). Needs a
    /// build with the `fleet` feature and `--store redis://...`, the store every node shares.
    #[arg(long, requires = "store")]
    pub cluster: Option<String>,
    /// This node's id in its fleet (by default `node-PORT`, after the `--listen` port, or
    /// `node-pidPID` when the port is 0).
    #[arg(long)]
    pub node_id: Option<String>,
    /// Where the fleet's other nodes reach this one (ractor_cluster; port 0: any free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub peer_listen: SocketAddr,
    /// The fleet's name: the prefix of its keys in etcd.
    #[arg(long, default_value = "battle")]
    pub fleet_name: String,
    /// The secret every node of the fleet shares.
    #[arg(long, env = "GARRISON_FLEET_COOKIE", default_value = DEMO_KEY)]
    pub fleet_cookie: String,
    /// Append this node's activation log (a room or the matchmaker activated or left here) to
    /// this file.
    #[arg(long)]
    pub activation_log: Option<PathBuf>,
    /// Seconds a node of a fleet keeps its shards after it stops answering etcd (its lease).
    #[arg(long, default_value_t = 3)]
    pub lease_seconds: u64,
}

impl ServeArgs {
    /// The settings of a `serve` with nothing but `listen` and `store` given (a test's child).
    pub fn new(listen: SocketAddr) -> Self {
        use clap::FromArgMatches;
        let matches = <ServeArgs as clap::Args>::augment_args(clap::Command::new("serve"))
            .no_binary_name(true)
            .get_matches_from(["--listen", &listen.to_string()]);
        ServeArgs::from_arg_matches(&matches).expect("the defaults parse")
    }
}

/// Spectators a room takes by default.
pub const DEFAULT_SPECTATORS_PER_ROOM: usize = 32;

/// Runs the server until SIGTERM or Ctrl-C, then stops gracefully: clients are told `Close 31`
/// (reconnect shortly) and every checkpoint and log entry is written to the store before the
/// process exits. Prints `listening on ADDRESS` once it accepts players.
///
/// # Errors
/// When the store cannot be opened or the server cannot start.
pub async fn serve(args: ServeArgs) -> Result<(), Error> {
    let mut config = local_server(args.room_size, &args.key)?;
    config.gateway.tcp = Some(args.listen);
    config.gateway.websocket = args.ws_listen;
    config.match_frames = match_frames(args.match_seconds);
    config.protection = protection(&args.overload, args.breaker_base_qps, config.tick);
    config.spectators_per_room = args.spectators_per_room;
    config.store = match (&args.store, args.memory_only) {
        (_, true) => None,
        (Some(url), false) => {
            let store =
                garrison_runtime::store::RedisStore::connect(url, &args.store_namespace).await?;
            eprintln!("state store: redis {url}");
            Some(Arc::new(store) as garrison_runtime::store::Store)
        }
        (None, false) => {
            let store = garrison_runtime::store::RedbStore::open(&args.data_dir)?;
            eprintln!("state store: redb in {}", args.data_dir.display());
            Some(Arc::new(store) as garrison_runtime::store::Store)
        }
    };
    let server = match &args.cluster {
        None => BattleServer::start(config).await?,
        Some(cluster) => start_node(config, &args, cluster).await?,
    };
    let address = server.gateway.tcp_addr().ok_or("no TCP listener")?;
    let endpoint = match args.metrics {
        Some(at) => {
            let endpoint = server.metrics().serve(at).await?;
            endpoint.health().set_ready(true);
            eprintln!(
                "metrics on http://{}/metrics (and /healthz, /readyz)",
                endpoint.local_addr()
            );
            Some(endpoint)
        }
        None => None,
    };
    let web = match (args.web, server.gateway.websocket_addr()) {
        (Some(at), Some(websocket)) => {
            let (local, task) = crate::web::serve(crate::web::WebConfig {
                address: at,
                scripts: args.web_js.clone(),
                websocket,
                dev_tickets: args.dev_tickets.then(|| args.key.as_bytes().to_vec()),
            })
            .await?;
            if args.dev_tickets {
                eprintln!(
                    "DEVELOPMENT tickets on http://{local}/dev/ticket: anyone reaching it plays"
                );
            }
            println!("page on http://{local}/");
            Some(task)
        }
        _ => None,
    };
    if let Some(websocket) = server.gateway.websocket_addr() {
        println!("websocket on {websocket}");
    }
    println!("listening on {address}");
    eprintln!("battle server on {address}; SIGTERM or Ctrl-C stops it gracefully");
    let summary = Duration::from_secs(args.cause_summary_secs.max(1));
    let mut summaries = tokio::time::interval_at(tokio::time::Instant::now() + summary, summary);
    let mut summarized = 0;
    let stopping = stop_signal();
    tokio::pin!(stopping);
    let mut status = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            stopped = &mut stopping => {
                stopped?;
                break;
            }
            _ = summaries.tick() => summarized = summarize_causes(&server, summarized),
            // A fleet's node says what it holds every second (the `cluster` demo reads it).
            _ = status.tick(), if args.cluster.is_some() => print_node_status(&server),
        }
    }
    if let Some(endpoint) = &endpoint {
        // Draining: a load balancer stops sending players here.
        endpoint.health().set_ready(false);
    }
    eprintln!("stopping: closing sessions (Close 31) and flushing the store");
    if let Some(web) = web {
        web.abort();
    }
    let stopped = server.stop().await;
    if let Some(endpoint) = endpoint {
        endpoint.stop().await;
    }
    if stopped {
        eprintln!("stopped: every checkpoint is in the store");
        Ok(())
    } else {
        Err("stopped, but the store did not take every checkpoint".into())
    }
}

/// Starts `serve`'s server as a node of the fleet `--cluster` names.
#[cfg(feature = "fleet")]
async fn start_node(
    config: ServerConfig,
    args: &ServeArgs,
    cluster: &str,
) -> Result<BattleServer, Error> {
    let etcd: Vec<String> = cluster
        .strip_prefix("etcd=")
        .ok_or("--cluster takes etcd=URL[,URL...]")?
        .split(',')
        .map(str::to_owned)
        .collect();
    let node_id = args
        .node_id
        .clone()
        .unwrap_or_else(|| match args.listen.port() {
            0 => format!("node-pid{}", std::process::id()),
            port => format!("node-{port}"),
        });
    let settings = crate::fleet::FleetSettings {
        etcd,
        namespace: args.fleet_name.clone(),
        node_id: node_id.clone(),
        peer_listen: args.peer_listen,
        advertise: None,
        cookie: args.fleet_cookie.clone(),
        activation_log: args.activation_log.clone(),
        lease_ttl: Duration::from_secs(args.lease_seconds.max(1)),
    };
    let server = BattleServer::start_in_fleet(config, settings).await?;
    eprintln!(
        "node {node_id} of fleet {} on etcd {cluster}",
        args.fleet_name
    );
    Ok(server)
}

#[cfg(not(feature = "fleet"))]
async fn start_node(_: ServerConfig, _: &ServeArgs, _: &str) -> Result<BattleServer, Error> {
    Err("this garrison-battle was built without the fleet: build it with `--features fleet`".into())
}

/// One line of what a fleet's node holds (`fleet node=ID shards=N rooms=N ...`).
fn print_node_status(server: &BattleServer) {
    #[cfg(feature = "fleet")]
    if let Some(fleet) = server.fleet() {
        let report = fleet.report();
        let census = server.census();
        println!(
            "fleet node={} shards={} rooms={} players={} sessions={} handoffs={} handed_off={} \
             last_handoff_us={} arrivals={} recovered={} released={} buffered={} forwarded={} \
             received={} inputs={} frames={}",
            fleet.id(),
            report.shards,
            census.rooms,
            census.players,
            census.sessions,
            report.kinds.handoffs,
            report.kinds.handed_off,
            report.kinds.last_handoff.as_micros(),
            report.kinds.arrivals,
            report.kinds.recovered,
            report.kinds.released,
            report.kinds.buffered,
            report.forwarded,
            report.received,
            server
                .stats
                .inputs
                .load(std::sync::atomic::Ordering::Relaxed),
            server
                .stats
                .frames
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    #[cfg(not(feature = "fleet"))]
    let _ = server;
}

/// The protection `--overload` names (`none` for anything else).
pub fn protection(name: &str, breaker_base_qps: f64, tick: Duration) -> crate::server::Protection {
    use garrison_runtime::overload::{BreakerConfig, OverloadConfig};
    match name {
        // The rooms' mailboxes may take a quarter of the tick: the rest of it is the gateway's
        // read, the frame's simulation and the broadcast's write.
        "adaptive" => crate::server::Protection::Adaptive(OverloadConfig {
            target: tick / 4,
            ..OverloadConfig::default()
        }),
        "breaker" => crate::server::Protection::Breaker(BreakerConfig::new(breaker_base_qps, tick)),
        _ => crate::server::Protection::None,
    }
}

/// Logs the top crash causes when any crash happened since the summary that had seen
/// `summarized` of them; returns how many it has seen now.
fn summarize_causes(server: &BattleServer, summarized: u64) -> u64 {
    let causes = server.crash_causes();
    let total: u64 = causes.iter().map(|(_, cause)| cause.count).sum();
    if total == summarized {
        return total;
    }
    for (kind, cause) in causes.iter().take(5) {
        let seen = |at: std::time::SystemTime| {
            at.elapsed().map_or_else(
                |_| "now".to_owned(),
                |ago| format!("{}s ago", ago.as_secs()),
            )
        };
        tracing::warn!(
            game.entity.kind = kind,
            exit = cause.exit,
            cause = %cause.cause,
            restarts = cause.count,
            first_seen = %seen(cause.first_seen),
            last_seen = %seen(cause.last_seen),
            example_trace = cause
                .example_trace
                .map(|trace| trace.trace_id.iter().map(|byte| format!("{byte:02x}")).collect::<String>())
                .as_deref(),
            "top crash cause: {kind}: {} at {}, {} restarts",
            cause.exit,
            cause.cause,
            cause.count
        );
    }
    total
}

/// Starts the server command in a shell.
fn spawn_server(command: &str) -> Result<ServerProcess, String> {
    ServerProcess::start(std::process::Command::new("sh").args(["-c", &format!("exec {command}")]))
}

/// Stops the spawned server (killed, or stopped gracefully) and starts it again; returns the new
/// pid.
fn restart_server(
    child: &std::sync::Mutex<Option<ServerProcess>>,
    command: &str,
    graceful: bool,
) -> Result<u32, String> {
    let mut child = child.lock().map_err(|_| "the server handle is poisoned")?;
    // None: the run is over and its server stopped; nothing to restart.
    let running = child.take().ok_or("the run is over")?;
    if graceful {
        running.terminate(Duration::from_secs(20))?;
    } else {
        running.kill()?;
    }
    let started = spawn_server(command)?;
    let pid = started.id();
    *child = Some(started);
    Ok(pid)
}

/// SIGTERM (a deploy, an orchestrator) or Ctrl-C.
async fn stop_signal() -> Result<(), Error> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            result = tokio::signal::ctrl_c() => Ok(result?),
        }
    }
    #[cfg(not(unix))]
    {
        Ok(tokio::signal::ctrl_c().await?)
    }
}

/// Frames per second of the battle's lockstep (its tick is 1/60 s).
pub const FRAME_RATE: u32 = 60;

/// The in-process server's configuration for `room_size` and a loopback listener, with matches
/// of 20 s.
pub fn local_server(room_size: usize, key: &str) -> Result<ServerConfig, Error> {
    let zone: Arc<str> = "arena-1".into();
    let mut gateway = GatewayConfig::new(key.as_bytes().to_vec());
    gateway.tcp = Some("127.0.0.1:0".parse()?);
    gateway.zone = Some(zone.clone());
    gateway.layout = Some(crate::proto::layout_hash());
    Ok(ServerConfig {
        room_size: room_size.max(1),
        tick: Duration::from_micros(16_667),
        input_delay: 3,
        resend_limit: 300,
        match_frames: 20 * FRAME_RATE,
        zone,
        gateway,
        store: None,
        snapshot_every: crate::room::SNAPSHOT_EVERY,
        protection: crate::server::Protection::None,
        spectators_per_room: DEFAULT_SPECTATORS_PER_ROOM,
    })
}

/// A match of `seconds` in frames (at least one).
pub fn match_frames(seconds: u64) -> u32 {
    u32::try_from(seconds.saturating_mul(u64::from(FRAME_RATE)))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// Runs `args.clients` bots once (the in-process server, if any, lives for this run only).
///
/// # Errors
/// When the server cannot start or the flags contradict each other.
pub async fn run_once(args: &BotArgs, clients: u64, progress: bool) -> Result<Summary, Error> {
    let remote = args.server.is_some() || args.spawn_server.is_some() || !args.fleet.is_empty();
    if remote && args.room_panic_every > 0 {
        return Err("--room-panic-every needs the in-process server (no --server)".into());
    }
    if args.server.is_some() && args.spawn_server.is_some() {
        return Err("--server and --spawn-server both name the server: give one".into());
    }
    let spawned = match &args.spawn_server {
        Some(command) => {
            let command = command.clone();
            let child = tokio::task::spawn_blocking(move || spawn_server(&command)).await??;
            Some(Arc::new(std::sync::Mutex::new(Some(child))))
        }
        None => None,
    };
    let spawned_address = spawned
        .as_ref()
        .and_then(|child| child.lock().ok()?.as_ref().map(ServerProcess::address));
    let (server, address) = match args
        .server
        .or(spawned_address)
        .or(args.fleet.first().copied())
    {
        Some(address) => (None, address),
        None => {
            let mut config = local_server(args.room_size, &args.key)?;
            config.match_frames = match_frames(args.match_seconds);
            config.snapshot_every = args.snapshot_every.max(1);
            config.protection = protection(&args.overload, args.breaker_base_qps, config.tick);
            if let Some(dir) = &args.data_dir {
                config.store = Some(Arc::new(garrison_runtime::store::RedbStore::open(dir)?));
            }
            let server = BattleServer::start(config).await?;
            let address = server.gateway.tcp_addr().ok_or("no TCP listener")?;
            (Some(Arc::new(server)), address)
        }
    };
    if progress {
        eprintln!(
            "battle server on {address}{}; {clients} bots in rooms of {} for {} s",
            if server.is_some() {
                " (in-process)"
            } else {
                ""
            },
            args.room_size,
            args.duration
        );
    }
    // The server process whose CPU is measured: the one spawned, or the one named.
    let server_pid = spawned
        .as_ref()
        .and_then(|child| child.lock().ok()?.as_ref().map(ServerProcess::id))
        .or(args.server_pid);
    let start = Instant::now();
    let cpu_start = process_cpu_seconds();
    let server_cpu_start = server_pid.and_then(cpu_seconds_of);
    let deadline = start + Duration::from_secs(args.duration);
    let input_every = (60 / args.input_rate.clamp(1, 60)).max(1);
    let away = Duration::from_millis(args.away_ms);
    let orders: Vec<Arc<Notify>> = (0..clients).map(|_| Arc::new(Notify::new())).collect();
    let bots: Vec<_> = orders
        .iter()
        .enumerate()
        .map(|(index, order)| {
            let options = BotOptions {
                input_every,
                drop: (args.drop_percent > 0).then(|| (order.clone(), away)),
                trace: args.trace_inputs,
                matches: None,
                server_restarts: match (args.survive_restarts, args.restart_server_every) {
                    (0, 0) => None,
                    // Restarted by this run: come back to it.
                    (0, _) => Some(Duration::from_secs(30)),
                    (window, _) => Some(Duration::from_secs(window)),
                },
                // Spread evenly: every room of a run with some has some.
                updates: if (index as u64 * u64::from(args.full_updates_percent.min(100))) % 100
                    < u64::from(args.full_updates_percent.min(100))
                {
                    Updates::Full
                } else {
                    Updates::Inputs
                },
                button_changes: args.button_changes,
                fleet: Arc::from(args.fleet.clone()),
                silence: (args.silence_ms > 0).then(|| Duration::from_millis(args.silence_ms)),
            };
            // Spread over the fleet's gateways, if there are several.
            let address = match args.fleet.len() {
                0 => address,
                nodes => args.fleet[index % nodes],
            };
            tokio::spawn(play(
                address,
                args.key.as_bytes().to_vec(),
                args.first_player + index as u64,
                deadline,
                options,
            ))
        })
        .collect();

    let mut background = Vec::new();
    if progress {
        let stats = server.as_ref().map(|server| server.stats.clone());
        background.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticker.tick().await;
                match &stats {
                    Some(stats) => eprint!(
                        "\r{:>4.0} s  rooms {:>4}  frames {:>8}  restarts {:>3}  resumes {:>4}",
                        start.elapsed().as_secs_f64(),
                        stats.rooms.load(Ordering::Relaxed),
                        stats.frames.load(Ordering::Relaxed),
                        stats.restarts.load(Ordering::Relaxed),
                        stats.resumes.load(Ordering::Relaxed),
                    ),
                    None => eprint!("\r{:>4.0} s", start.elapsed().as_secs_f64()),
                }
            }
        }));
    }
    if let (Some(server), true) = (&server, args.room_panic_every > 0) {
        let server = server.clone();
        let every = Duration::from_secs(args.room_panic_every);
        background.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                server.crash_rooms();
            }
        }));
    }
    if let (Some(child), true) = (&spawned, args.restart_server_every > 0) {
        let child = child.clone();
        let every = Duration::from_secs(args.restart_server_every);
        let graceful = args.restart_mode == "graceful";
        let command = args.spawn_server.clone().unwrap_or_default();
        background.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let (child, command) = (child.clone(), command.clone());
                let restarted =
                    tokio::task::spawn_blocking(move || restart_server(&child, &command, graceful))
                        .await;
                match restarted {
                    Ok(Ok(pid)) => eprintln!(
                        "\nchaos: the server was {} and started again (pid {pid})",
                        if graceful {
                            "stopped gracefully"
                        } else {
                            "killed"
                        }
                    ),
                    Ok(Err(error)) => eprintln!("\nchaos: the server restart failed: {error}"),
                    Err(error) => eprintln!("\nchaos: the restart task failed: {error}"),
                }
            }
        }));
    }
    if args.drop_percent > 0 {
        let share = args.drop_percent.min(100) as usize;
        let every = Duration::from_secs(args.drop_every.max(1));
        let orders = orders.clone();
        background.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.tick().await;
            let mut round = 0usize;
            loop {
                ticker.tick().await;
                // A different, evenly spread share of the bots each round.
                let count = (orders.len() * share).div_ceil(100);
                let stride = (orders.len() / count.max(1)).max(1);
                for index in 0..count {
                    orders[(index * stride + round) % orders.len()].notify_one();
                }
                round += 1;
            }
        }));
    }

    let mut reports = Vec::with_capacity(bots.len());
    for bot in bots {
        reports.push(
            bot.await
                .unwrap_or_else(|error| Err(BotError::Crashed(error.to_string()))),
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds()
        .zip(cpu_start)
        .map(|(end, start)| end - start);
    // Only while the same process ran throughout (a restarted server is another pid).
    let same_server = spawned.as_ref().is_none_or(|child| {
        child
            .lock()
            .ok()
            .and_then(|child| child.as_ref().map(ServerProcess::id))
            == server_pid
    });
    let server_cpu_seconds = server_pid
        .filter(|_| same_server)
        .and_then(cpu_seconds_of)
        .zip(server_cpu_start)
        .map(|(end, start)| end - start);
    for task in &background {
        task.abort();
    }
    for task in background {
        // Aborted: wait for each to let go of its handle on the server.
        let _ = task.await;
    }
    if progress {
        eprintln!();
        for failure in reports
            .iter()
            .filter_map(|report| report.as_ref().err())
            .take(3)
        {
            eprintln!("bot failed: {failure}");
        }
    }
    let (frames, restarts) = match &server {
        Some(server) => (
            Some(server.stats.frames.load(Ordering::Relaxed)),
            Some(server.stats.restarts.load(Ordering::Relaxed)),
        ),
        None => (None, None),
    };
    if let Some(child) = spawned {
        // Stopped under its lock: a restart in flight finishes first, and none starts after.
        tokio::task::spawn_blocking(move || {
            let mut child = child.lock().map_err(|_| "the server handle is poisoned")?;
            match child.take() {
                Some(running) => running.terminate(Duration::from_secs(20)),
                None => Ok(()),
            }
        })
        .await??;
    }
    let mut summary = Summary::new(&reports, frames, restarts, seconds);
    summary.cpu_seconds = cpu_seconds;
    summary.server_cpu_seconds = server_cpu_seconds;
    summary.store_bytes = server
        .as_ref()
        .and_then(|server| server.room_durability())
        .map(|stats| stats.bytes);
    summary.overload = server.as_ref().and_then(|server| server.overload_stats());
    if let Some(server) = server {
        match Arc::try_unwrap(server) {
            Ok(server) => {
                server.stop().await;
            }
            Err(_) => return Err("the server is still shared".into()),
        }
    }
    Ok(summary)
}

/// The source's decay table (clients, KB/s, P99 ms, deviation frames).
pub const SOURCE_ROWS: [(u64, f64, f64, u32); 3] = [
    (10, 18.0, 21.0, 0),
    (100, 142.0, 49.0, 1),
    (500, 680.0, 137.0, 3),
];

/// Runs the bots as `args` say: one run with its table (and JSON), or a sweep.
///
/// # Errors
/// When a run or the plot fails.
pub async fn main(args: BotArgs) -> Result<(), Error> {
    if !args.capacity.is_empty() {
        return capacity(&args).await;
    }
    if args.sweep.is_empty() {
        let summary = run_once(&args, args.clients, true).await?;
        println!("{}", summary.table());
        if args.json {
            println!("{}", summary.json());
        }
        // A run that played nothing, or played wrong, fails: CI runs the demo as README does.
        let problems = summary.problems();
        if !problems.is_empty() {
            return Err(format!("the run failed its checks: {}", problems.join("; ")).into());
        }
        return Ok(());
    }
    let mut points = Vec::new();
    let mut first_player = args.first_player;
    for &clients in &args.sweep {
        let args = BotArgs {
            first_player,
            ..args.clone()
        };
        first_player += clients;
        eprintln!("sweep: {clients} clients for {} s", args.duration);
        let summary = run_once(&args, clients, true).await?;
        if args.json {
            println!("{}", summary.json());
        }
        points.push((clients, summary));
    }
    println!("{}", sweep_table(&points));
    crate::plot::sweep(&args.plot, &points, &SOURCE_ROWS)?;
    println!("curve drawn to {}", args.plot.display());
    Ok(())
}

/// Why a capacity step did not hold (empty: it held): P99 over `p99_ms`, frame deviation over
/// `deviation` once every client is in its match, a joining phase longer than the steady state
/// it leaves to measure, a desync, a failed bot, or nothing played.
pub fn capacity_breaks(summary: &Summary, p99_ms: f64, deviation: u32) -> Vec<String> {
    let mut breaks = summary.problems();
    if summary.compared_frames < summary.joining_compared_frames {
        breaks.push(format!(
            "joining took most of the run ({} of {} frames compared)",
            summary.joining_compared_frames,
            summary.joining_compared_frames + summary.compared_frames
        ));
    }
    if summary.p99_ms > p99_ms {
        breaks.push(format!("P99 {:.1} ms over {p99_ms:.1} ms", summary.p99_ms));
    }
    if summary.deviation_frames > deviation {
        breaks.push(format!(
            "frame deviation {} ({} of {} frames)",
            summary.deviation_frames, summary.deviated_frames, summary.compared_frames
        ));
    }
    breaks
}

/// One step of a capacity ramp.
pub struct CapacityStep {
    /// Clients in the step.
    pub clients: u64,
    /// Its run.
    pub summary: Summary,
    /// CPU seconds of the server (a separate process) or of the whole process (in-process).
    pub cpu_seconds: Option<f64>,
    /// Why it did not hold (empty: it held).
    pub breaks: Vec<String>,
}

impl CapacityStep {
    /// CPU milliseconds per client-second.
    pub fn cpu_ms_per_client_second(&self, seconds: u64) -> Option<f64> {
        self.cpu_seconds
            .map(|cpu| cpu * 1e3 / (self.clients as f64 * seconds.max(1) as f64))
    }
}

/// Ramps the clients as `--capacity START,STEP,MAX` says, one fresh run per step, until a step
/// breaks (see [`capacity_breaks`]) or `MAX` held. Returns every step run.
///
/// # Errors
/// A malformed `--capacity`, or a run that could not be made.
pub async fn capacity_ramp(args: &BotArgs) -> Result<Vec<CapacityStep>, Error> {
    let &[start, step, max] = args.capacity.as_slice() else {
        return Err("--capacity takes START,STEP,MAX (e.g. 250,250,3000)".into());
    };
    if start == 0 || step == 0 || max < start {
        return Err("--capacity needs START > 0, STEP > 0 and MAX >= START".into());
    }
    let remote = args.server.is_some() || args.spawn_server.is_some();
    let mut steps = Vec::new();
    let mut first_player = args.first_player;
    let mut clients = start;
    loop {
        let step_args = BotArgs {
            first_player,
            ..args.clone()
        };
        first_player += clients;
        eprintln!("capacity: {clients} clients for {} s", args.duration);
        let summary = run_once(&step_args, clients, false).await?;
        let breaks = capacity_breaks(&summary, args.capacity_p99_ms, args.capacity_deviation);
        let cpu_seconds = match remote {
            true => summary.server_cpu_seconds,
            // In-process, the server's CPU cannot be told from the bots'.
            false => summary.cpu_seconds,
        };
        let held = breaks.is_empty();
        steps.push(CapacityStep {
            clients,
            summary,
            cpu_seconds,
            breaks,
        });
        if !held || clients >= max {
            return Ok(steps);
        }
        clients = (clients + step).min(max);
    }
}

/// Capacity mode: runs [`capacity_ramp`] and prints its table and the figure.
async fn capacity(args: &BotArgs) -> Result<(), Error> {
    let remote = args.server.is_some() || args.spawn_server.is_some();
    let steps = capacity_ramp(args).await?;
    println!(
        "capacity: {} CPU; a step holds with P99 <= {:.1} ms beyond the input delay, frame deviation 0 once every client is in its match (while joining: counted, not held to it), no desync, no failed bot",
        if remote {
            "the server's own"
        } else {
            "the whole process's (server and bots; use --spawn-server for the server's alone)"
        },
        args.capacity_p99_ms
    );
    println!(
        "clients | P99 ms | deviation | joining | desyncs | failed | CPU cores | CPU ms per client-second | CPU us per client-frame | bots' cores | holds"
    );
    let show = |value: Option<f64>, scale: f64| {
        value.map_or_else(
            || "unknown".to_owned(),
            |value| format!("{:.2}", value * scale),
        )
    };
    for step in &steps {
        let per_client_second = step.cpu_ms_per_client_second(args.duration);
        // The load generator's own CPU (this process), when the server is another: a step that
        // broke while the bots' core was full measured the bots, not the server.
        let bots = remote.then_some(step.summary.cpu_seconds).flatten();
        println!(
            "{:>7} | {:>6.1} | {:>9} | {:>7} | {:>7} | {:>6} | {:>9} | {:>24} | {:>23} | {:>11} | {}",
            step.clients,
            step.summary.p99_ms,
            step.summary.deviation_frames,
            step.summary.joining_deviation_frames,
            step.summary.desyncs,
            step.summary.failed,
            show(step.cpu_seconds, 1.0 / args.duration.max(1) as f64),
            show(per_client_second, 1.0),
            // 60 frames a second.
            show(per_client_second, 1e3 / 60.0),
            show(bots, 1.0 / args.duration.max(1) as f64),
            if step.breaks.is_empty() {
                "yes".to_owned()
            } else {
                format!("no: {}", step.breaks.join(", "))
            }
        );
    }
    let held = steps.iter().rev().find(|step| step.breaks.is_empty());
    let broke = steps.iter().find(|step| !step.breaks.is_empty());
    match held {
        Some(step) => println!(
            "capacity: {} clients held{}{}",
            step.clients,
            step.cpu_ms_per_client_second(args.duration)
                .map_or_else(String::new, |cpu| format!(
                    " at {cpu:.2} ms of CPU per client-second ({:.1} us per client-frame)",
                    cpu * 1e3 / 60.0
                )),
            broke.map_or_else(
                || " (the most asked for: a lower bound)".to_owned(),
                |broke| format!("; {} broke", broke.clients)
            )
        ),
        None => println!(
            "capacity: the first step, {} clients, already broke",
            steps[0].clients
        ),
    }
    Ok(())
}

/// The decay table: our rows, and the source's where it has one for the same client count.
/// KB/s is the server's total outbound (what every client receives), which is what the
/// source's column grows like.
pub fn sweep_table(points: &[(u64, Summary)]) -> String {
    let mut table = String::from(
        "clients | KB/s out (total) | KB/s per client | P99 ms | deviation | desyncs | failed || source KB/s | source KB/s per client | source P99 ms | source deviation\n",
    );
    for (clients, summary) in points {
        let source = SOURCE_ROWS
            .iter()
            .find(|row| row.0 == *clients)
            .map_or_else(
                || "- | - | - | -".to_string(),
                |row| {
                    let per_client = row.1 / row.0 as f64;
                    format!("{:.0} | {per_client:.2} | {:.0} | {}", row.1, row.2, row.3)
                },
            );
        table.push_str(&format!(
            "{clients} | {:.0} | {:.2} | {:.2} | {} | {} | {} || {source}\n",
            summary.kbps_in * (summary.clients - summary.unmatched) as f64,
            summary.kbps_in,
            summary.p99_ms,
            summary.deviation_frames,
            summary.desyncs,
            summary.failed,
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bots::{BotError, BotReport};

    #[derive(clap::Parser)]
    struct BotArgsParser {
        #[command(flatten)]
        args: BotArgs,
    }

    fn capacity_args(capacity: [u64; 3], p99_ms: f64) -> BotArgs {
        let cli = <BotArgsParser as clap::Parser>::parse_from([
            "battle-bots",
            "--duration",
            "2",
            "--room-size",
            "4",
        ]);
        BotArgs {
            capacity: capacity.to_vec(),
            capacity_p99_ms: p99_ms,
            // A debug build on a loaded machine: latency and deviation are not what is tested.
            capacity_deviation: u32::MAX,
            ..cli.args
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_capacity_ramp_stops_at_the_first_step_that_breaks() {
        // A bound no run can keep: the first step breaks on latency, and the ramp stops there.
        let steps = capacity_ramp(&capacity_args([4, 4, 12], 0.0))
            .await
            .unwrap();
        assert_eq!(steps.len(), 1);
        assert!(
            steps[0].breaks.iter().any(|why| why.starts_with("P99")),
            "{:?}",
            steps[0].breaks
        );
        // Bounds any correct run keeps: every step up to MAX runs, and holds.
        let steps = capacity_ramp(&capacity_args([4, 4, 8], 10_000.0))
            .await
            .unwrap();
        let clients: Vec<u64> = steps.iter().map(|step| step.clients).collect();
        assert_eq!(clients, vec![4, 8]);
        for step in &steps {
            assert!(step.breaks.is_empty(), "{:?}", step.breaks);
            assert!(step.summary.frames > 0);
            assert!(
                step.cpu_ms_per_client_second(2)
                    .is_some_and(|cpu| cpu > 0.0)
            );
        }
        assert!(capacity_ramp(&capacity_args([4, 0, 8], 1.0)).await.is_err());
    }

    #[test]
    fn a_capacity_step_holds_to_the_steady_state_and_breaks_when_joining_took_most_of_it() {
        let tick = Duration::from_micros(16_667);
        let start = Instant::now();
        // Two clients of a room playing ten frames; b reads its first `joined` frames at once,
        // `joined` ticks in (it was still connecting), and frame `stall` (if any) a tick and a
        // quarter late.
        let run = |joined: u32, stall: Option<u32>| {
            let client = |b: bool| BotReport {
                room: 1,
                tick,
                frames: 10,
                next_frame: 10,
                verified: 1,
                latencies: vec![Duration::from_millis(1)],
                arrivals: (0..10)
                    .map(|frame| {
                        let mut at = start + tick * frame;
                        if b {
                            at = at.max(start + tick * joined);
                            if stall == Some(frame) {
                                at += tick + tick / 4;
                            }
                        }
                        crate::bots::Arrival { room: 1, frame, at }
                    })
                    .collect(),
                ..BotReport::default()
            };
            Summary::new(&[Ok(client(false)), Ok(client(true))], None, None, 1.0)
        };
        // Three ticks apart while joining: counted, and the step holds.
        let joined = run(3, None);
        assert_eq!(
            (
                joined.joining_deviation_frames,
                joined.joining_compared_frames,
                joined.compared_frames
            ),
            (3, 3, 7)
        );
        assert_eq!(capacity_breaks(&joined, 100.0, 0), Vec::<String>::new());
        // A tick apart once both were in play: the step breaks.
        let stalled = run(3, Some(6));
        assert_eq!(
            capacity_breaks(&stalled, 100.0, 0),
            ["frame deviation 1 (1 of 7 frames)"]
        );
        // b in play only for the last two frames: no steady state left to hold a step on.
        let late = run(8, None);
        assert_eq!(
            capacity_breaks(&late, 100.0, 0),
            ["joining took most of the run (8 of 10 frames compared)"]
        );
    }

    #[test]
    fn the_sweep_table_puts_the_sources_rows_beside_ours() {
        let report = BotReport {
            room: 1,
            next_frame: 60,
            bytes_in: 2_048,
            latencies: vec![Duration::from_millis(17)],
            ..BotReport::default()
        };
        let points: Vec<(u64, Summary)> = [10, 1_000]
            .into_iter()
            .map(|clients| {
                let reports: Vec<Result<BotReport, BotError>> =
                    (0..clients).map(|_| Ok(report.clone())).collect();
                (clients, Summary::new(&reports, None, None, 1.0))
            })
            .collect();
        let table = sweep_table(&points);
        let rows: Vec<&str> = table.lines().collect();
        assert!(rows[0].contains("source P99 ms"));
        assert!(rows[0].contains("source KB/s per client"));
        assert_eq!(
            rows[1],
            "10 | 20 | 2.00 | 17.00 | 0 | 0 | 0 || 18 | 1.80 | 21 | 0"
        );
        assert_eq!(
            rows[2], "1000 | 2000 | 2.00 | 17.00 | 0 | 0 | 0 || - | - | - | -",
            "no source row for 1,000 clients"
        );
        let svg = std::env::temp_dir().join(format!("sweep-{}.svg", std::process::id()));
        crate::plot::sweep(&svg, &points, &SOURCE_ROWS).unwrap();
        let drawn = std::fs::read_to_string(&svg).unwrap();
        let _ = std::fs::remove_file(&svg);
        assert!(drawn.starts_with("<svg"));
        assert!(drawn.contains("Server outbound KB/s") && drawn.contains("source"));
    }
}
