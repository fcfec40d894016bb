//! Gateway benchmarks, each beside a plain tokio TCP server written here as the baseline, in one
//! run: echo round trips with 1,000 clients (gateway -> entity -> gateway with the entity on the
//! tree's runtime and on its connection's event loop, and the gateway alone to show the entity
//! hop's share), and memory per idle connection at 10,000 and 50,000 connections.
//!
//! Run with: `cargo bench -p garrison-runtime --bench gateway`
//! (`-- --quick` for 200 clients and 2,000 connections).

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use garrison_protocol::{DecodeConfig, FrameCodec, FrameMeta, Snapshot, control::Hello};
use garrison_runtime::{
    Activation, Entities, Entity, EntityContext, HandlerError, KindConfig, Placement, SessionId,
    Sessions,
    gateway::{Gateway, GatewayBuilder, GatewayConfig, ticket},
};
use garrison_supervisor::{ChildSpec, SupervisorBuilder};
use garrison_tests::wire::{Input, TestMessage};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::codec::Framed;

const KEY: &[u8] = b"bench-key";
/// Alternating echo runs per server.
const RUNS: usize = 5;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Default)]
struct Nothing;

impl Snapshot for Nothing {
    const SCHEMA: &'static str = "bench.nothing";
    const VERSION: u16 = 1;
}

struct Echo {
    sessions: Arc<Sessions>,
}

impl Entity for Echo {
    const KIND: &'static str = "echo";
    type Key = u64;
    type State = Nothing;
    type Message = TestMessage;

    async fn activate(&self, _: &u64, _: Activation<Nothing>) -> Result<Nothing, HandlerError> {
        Ok(Nothing)
    }

    async fn handle(
        &self,
        context: &mut EntityContext<'_, Self>,
        message: TestMessage,
        _: &mut Nothing,
    ) -> Result<(), HandlerError> {
        // Echo the very frame that arrived: no re-encoding.
        let _ = self.sessions.push(
            SessionId(*context.key()),
            garrison_protocol::Protocol::frame(&message).clone(),
        );
        Ok(())
    }
}

/// Where the Garrison server's router sends an input.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// To the player's entity, which echoes it: the path a game's input takes. The entity runs
    /// where its kind's placement says.
    Entity(Placement),
    /// Straight back from the router: the gateway alone, to show what the entity hop costs.
    Gateway,
}

async fn garrison_server(
    route: Route,
) -> (Gateway<TestMessage>, garrison_supervisor::SupervisorRef) {
    let sessions = Arc::new(Sessions::new());
    let echoes = Entities::new(
        Echo {
            sessions: sessions.clone(),
        },
        KindConfig {
            placement: match route {
                Route::Entity(placement) => placement,
                Route::Gateway => Placement::Tree,
            },
            ..KindConfig::default()
        },
    )
    .unwrap();
    let tree = SupervisorBuilder::new("bench")
        .child(ChildSpec::new("echo", echoes.start()))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut config = GatewayConfig::new(KEY);
    config.tcp = Some("127.0.0.1:0".parse().unwrap());
    config.max_connections = 60_000;
    config.messages_per_second = 1_000_000;
    config.message_burst = 1_000_000;
    config.bytes_per_second = u32::MAX;
    config.byte_burst = u32::MAX;
    config.handshake_timeout = Duration::from_secs(120);
    config.idle_timeout = Duration::from_secs(600);
    let gateway = GatewayBuilder::<TestMessage>::new(config, sessions, move |session, message| {
        match route {
            Route::Entity(_) => session
                .send::<Echo>(message)
                .map_err(|refused| refused.reason),
            // The router answers itself: the gateway's own cost, without the entity hop.
            Route::Gateway => session
                .push(garrison_protocol::Protocol::frame(&message).clone())
                .map_err(|refused| refused.reason),
        }
    })
    .on_session(move |start| {
        start.session.bind(&echoes, start.session.player());
        Ok(())
    })
    .start()
    .unwrap();
    (gateway, tree)
}

/// The baseline: a plain tokio server, one task per connection, echoing every frame. Returns
/// its address and a count of the connections it has accepted.
async fn tokio_server() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            // As the gateway does: replies are small and latency-bound.
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut framed = Framed::new(stream, FrameCodec::new(DecodeConfig::default()));
                while let Some(Ok(frame)) = framed.next().await {
                    if framed.send(frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, accepted)
}

fn hello(player: u64) -> BytesMut {
    let mut wire = BytesMut::new();
    let ticket = ticket::mint(KEY, player, ticket::unix_now() + 3600);
    FrameCodec::default()
        .encode_message(
            &Hello { ticket, layout: 0 },
            FrameMeta::default(),
            &mut wire,
        )
        .unwrap();
    wire
}

async fn connect(address: SocketAddr, source: u8) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from(([127, 0, 0, source], 0)))
        .unwrap();
    socket.connect(address).await.unwrap()
}

/// One client: optional handshake, then (after every client is connected) `rounds` sequential
/// round trips; returns their latencies.
async fn client(
    address: SocketAddr,
    player: u64,
    handshake: bool,
    rounds: u32,
    start: Arc<tokio::sync::Barrier>,
) -> Vec<Duration> {
    let stream = connect(address, 1 + (player % 8) as u8).await;
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, FrameCodec::new(DecodeConfig::default()));
    if handshake {
        framed.get_mut().writable().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(framed.get_mut(), &hello(player))
            .await
            .unwrap();
        framed.next().await.unwrap().unwrap(); // Welcome
    }
    let mut codec = FrameCodec::default();
    // One untimed round trip first: it activates the player's entity (the runtime bench
    // measures activation), so the timed rounds are the steady state on both servers.
    round_trip(&mut framed, &mut codec, player, 0).await;
    start.wait().await;
    let mut latencies = Vec::with_capacity(rounds as usize);
    for seq in 1..=rounds {
        let start = Instant::now();
        round_trip(&mut framed, &mut codec, player, seq).await;
        latencies.push(start.elapsed());
    }
    latencies
}

/// Sends one input and waits for its echo.
async fn round_trip(
    framed: &mut Framed<TcpStream, FrameCodec>,
    codec: &mut FrameCodec,
    player: u64,
    seq: u32,
) {
    let frame = codec
        .encode_frame(
            &Input {
                entity: player,
                x: 1,
                y: 2,
                seq,
                tick: 0,
            },
            FrameMeta::seq(seq),
        )
        .unwrap();
    framed.send(frame).await.unwrap();
    let echo = framed.next().await.unwrap().unwrap();
    assert_eq!(echo.header().seq, seq);
}

/// The clients' own runtime: two threads apart from the server's, as clients in another process
/// would be. Sharing the server's workers would let the baseline's server tasks and the clients
/// wake each other without crossing a thread, which no deployed server enjoys.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .unwrap()
}

async fn echo_run(
    clients_on: &tokio::runtime::Handle,
    address: SocketAddr,
    handshake: bool,
    clients: u64,
    rounds: u32,
) -> (f64, Duration, Duration) {
    let barrier = Arc::new(tokio::sync::Barrier::new(clients as usize + 1));
    let tasks: Vec<_> = (0..clients)
        .map(|player| {
            clients_on.spawn(client(
                address,
                player + 1,
                handshake,
                rounds,
                barrier.clone(),
            ))
        })
        .collect();
    // The clock starts once every client is connected (and handshaken): round trips only.
    barrier.wait().await;
    let start = Instant::now();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let at = |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction) as usize];
    (
        latencies.len() as f64 / elapsed.as_secs_f64(),
        at(0.5),
        at(0.99),
    )
}

/// This process's CPU seconds so far (0 where it cannot be read).
fn cpu_seconds() -> f64 {
    garrison_runtime::clock::process_cpu_seconds().unwrap_or(0.0)
}

fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}

/// The child process: opens `count` connections (handshaking when asked), says "ready", and
/// holds them until its stdin closes.
fn run_clients(address: SocketAddr, count: u64, handshake: bool) {
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let streams = runtime.block_on(async {
        let mut streams = Vec::with_capacity(count as usize);
        for player in 1..=count {
            // Several source addresses: one has only ~28,000 ephemeral ports.
            let mut stream = connect(address, 1 + (player / 20_000) as u8).await;
            if handshake {
                tokio::io::AsyncWriteExt::write_all(&mut stream, &hello(player))
                    .await
                    .unwrap();
            }
            streams.push(stream);
        }
        streams
    });
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(streams);
}

/// Server RSS growth per connection while a child process holds `count` idle connections.
async fn idle_memory(
    address: SocketAddr,
    count: u64,
    handshake: bool,
    settled: impl Fn() -> bool,
) -> f64 {
    let before = garrison_tests::bench::rss_bytes();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--clients",
            &address.to_string(),
            &count.to_string(),
            if handshake { "handshake" } else { "plain" },
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !settled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the last allocations land before reading RSS.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per = (garrison_tests::bench::rss_bytes() - before) as f64 / count as f64;
    drop(child.stdin.take());
    let _ = child.wait();
    per
}

fn echo_only(server: &str) {
    let clients = client_runtime();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let route = match server {
            "garrison" => Some(Route::Entity(Placement::Tree)),
            "placed" => Some(Route::Entity(Placement::SessionLoop)),
            "gateway" => Some(Route::Gateway),
            _ => None,
        };
        let (address, handshake) = match route {
            Some(route) => {
                let (gateway, _tree) = garrison_server(route).await;
                let address = gateway.tcp_addr().unwrap();
                std::mem::forget(gateway);
                (address, true)
            }
            None => (tokio_server().await.0, false),
        };
        let rounds =
            std::env::var("GARRISON_ECHO_ROUNDS").map_or(40, |rounds| rounds.parse().unwrap_or(40));
        let (rate, p50, p99) = echo_run(clients.handle(), address, handshake, 1_000, rounds).await;
        println!("{server}: {rate:.0} frames/s p50 {p50:?} p99 {p99:?}");
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|arg| arg == "--clients") {
        let address = args[position + 1].parse().unwrap();
        let count = args[position + 2].parse().unwrap();
        return run_clients(address, count, args[position + 3] == "handshake");
    }
    if args.iter().any(|arg| arg == "--test" || arg == "--list") {
        return; // `cargo test --benches` smoke-runs benches; this one only measures.
    }
    let quick = args.iter().any(|arg| arg == "--quick");
    if let Some(position) = args.iter().position(|arg| arg == "--echo-only") {
        // One server's echo run alone, 1,000 clients x 40 round trips (for profiling one side):
        // `garrison`, `placed` (the entity on its connection's loop), `gateway` (the router
        // echoes) or `tokio`.
        return echo_only(&args[position + 1]);
    }
    let fd_limit = raise_fd_limit();
    let clients_runtime = client_runtime();
    let clients_on = clients_runtime.handle();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (clients, rounds) = if quick { (200, 20) } else { (1_000, 100) };
        let (tree, tree_supervisor) = garrison_server(Route::Entity(Placement::Tree)).await;
        let (placed, placed_supervisor) =
            garrison_server(Route::Entity(Placement::SessionLoop)).await;
        let (gateway_only, gateway_only_tree) = garrison_server(Route::Gateway).await;
        let (baseline_address, _) = tokio_server().await;
        // Alternating runs, so all see the same machine; the median of the per-run ratios is
        // the figure (one run on this shared machine can be off by a third either way).
        let servers = [
            ("entity on the tree", tree.tcp_addr().unwrap(), true),
            ("entity on its loop", placed.tcp_addr().unwrap(), true),
            ("gateway only", gateway_only.tcp_addr().unwrap(), true),
            ("tokio", baseline_address, false),
        ];
        let mut ratios = vec![Vec::new(); servers.len()];
        let mut cpu_ratios = vec![Vec::new(); servers.len()];
        let per_frame = |cpu: f64| cpu * 1e6 / f64::from(rounds) / clients as f64;
        println!("echo round trip, {clients} clients x {rounds} sequential round trips after one untimed warm-up each; clients on their own 2-thread runtime; {RUNS} alternating runs:");
        println!("  gateway -> entity -> gateway with the entity on the tree's runtime (Placement::Tree) and on its connection's event loop (Placement::SessionLoop); gateway only: the router echoes (no entity); tokio: a plain tokio server. CPU: whole process, clients included");
        for run in 0..RUNS {
            let mut line = format!("  run {run}:");
            let mut results = Vec::new();
            for (name, address, handshake) in servers {
                let cpu = cpu_seconds();
                let (rate, p50, p99) =
                    echo_run(clients_on, address, handshake, clients, rounds).await;
                let cpu = cpu_seconds() - cpu;
                line.push_str(&format!(" {name} {rate:.0}/s p50 {p50:.1?} p99 {p99:.1?} {:.1} us CPU/frame |", per_frame(cpu)));
                results.push((rate, cpu));
            }
            println!("{}", line.trim_end_matches(" |"));
            let (base_rate, base_cpu) = results[servers.len() - 1];
            for (index, (rate, cpu)) in results.into_iter().enumerate() {
                ratios[index].push(rate / base_rate);
                cpu_ratios[index].push(cpu / base_cpu);
            }
        }
        for (index, (name, _, _)) in servers.iter().enumerate().take(servers.len() - 1) {
            ratios[index].sort_by(f64::total_cmp);
            cpu_ratios[index].sort_by(f64::total_cmp);
            let runs = &ratios[index];
            println!(
                "  ratio ({name} / tokio frames/s): median {:.2}x (runs {:.2}-{:.2}x); CPU per frame median {:.2}x",
                runs[RUNS / 2], runs[0], runs[RUNS - 1], cpu_ratios[index][RUNS / 2]
            );
        }
        for (gateway, tree) in [
            (tree, tree_supervisor),
            (placed, placed_supervisor),
            (gateway_only, gateway_only_tree),
        ] {
            gateway.shutdown().await;
            tree.stop().await.unwrap();
        }

        let mut counts = if quick { vec![2_000] } else { vec![10_000, 50_000] };
        counts.retain(|count| count + 200 < fd_limit);
        println!("memory per idle connection (server RSS growth; clients in a child process; fd limit {fd_limit}):");
        for count in counts {
            let (gateway, tree) = garrison_server(Route::Entity(Placement::Tree)).await;
            let address = gateway.tcp_addr().unwrap();
            let gateway = Arc::new(gateway);
            let watched = gateway.clone();
            let ours = idle_memory(address, count, true, move || watched.metrics().active as u64 >= count && watched.metrics().frames_in >= count).await;
            let (baseline_address, accepted) = tokio_server().await;
            let theirs = idle_memory(baseline_address, count, false, move || accepted.load(Ordering::Relaxed) >= count).await;
            println!("  {count:>6} connections: garrison {ours:>7.0} B/connection (handshaken sessions)   tokio task+codec {theirs:>7.0} B/connection");
            if let Ok(gateway) = Arc::try_unwrap(gateway) {
                gateway.shutdown().await;
            }
            tree.stop().await.unwrap();
        }
    });
}
