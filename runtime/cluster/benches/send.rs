//! What a message costs when it crosses nodes, beside the same message on one node: an `echo`
//! entity answers every ping with a pong to a `sink` entity on the bench's own node, which hands
//! it to the bench. Three routes, side by side in one run:
//! - **plain**: `Entities::send` on one process, no fleet layer (the baseline);
//! - **fleet, same node**: `Sharded::send` for a key this node owns (encoded, routed by the
//!   table, validated on delivery: the fleet layer's cost on a local send);
//! - **fleet, another node**: `Sharded::send` for a key the peer owns (over ractor_cluster to a
//!   second process on loopback, and the pong back).
//!
//! It prints the round trip's median and 99th percentile, one ping at a time, and the
//! throughput with up to 512 pings in flight, each route against the one before.
//!
//! `cargo bench -p garrison-cluster --features nodes --bench send -- [--pings N]` (default
//! 20,000 per route and measure). The peer is this binary run again, killed by its pid at the
//! end; loopback only.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use garrison_cluster::fleet::{Kinds, Sharded};
use garrison_cluster::node::{Node, NodeConfig};
use garrison_cluster::{Table, shard_of};
use garrison_protocol::{Schema, Validated, messages};
use garrison_runtime::prelude::{SupervisorRef, supervisor};
use garrison_runtime::{Entities, Entity, EntityContext, EntityMessage, HandlerError, KindConfig};
use rkyv::{Archive, Deserialize, Serialize};
use tokio::sync::mpsc;

const SHARDS: u16 = 64;
const COOKIE: &str = "garrison-send-bench";
const PEER: &str = "GARRISON_SEND_PEER";
/// Pings in flight at most, in the throughput measure (the mailboxes hold 4,096).
const WINDOW: usize = 512;

#[derive(Archive, Serialize, Deserialize, Schema, Debug)]
pub struct Ping {
    pub n: u32,
}

#[derive(Archive, Serialize, Deserialize, Schema, Debug)]
pub struct Pong {
    pub n: u32,
}

messages! {
    pub enum BenchMessage {
        0x0f31 => Ping(Ping),
        0x0f32 => Pong(Pong),
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn table() -> Table {
    Table::empty(SHARDS)
        .rebalance(&["a".to_owned(), "b".to_owned()])
        .0
}

/// The first key of `kind` whose shard `node` owns.
fn key_on(table: &Table, kind: &str, node: &str) -> u32 {
    (0..)
        .find(|key: &u32| {
            table
                .owner(shard_of(kind, key.to_string().as_bytes(), SHARDS))
                .is_some_and(|(owner, _)| owner == node)
        })
        .expect("both nodes own shards")
}

enum EchoMsg {
    /// From the fleet: answer through the fleet.
    Wire(Validated<Ping>),
    /// From this process: answer straight to the sink.
    Plain(u32),
}

impl EntityMessage for EchoMsg {
    fn event_type(&self) -> &'static str {
        "ping"
    }
}

#[derive(Archive, Serialize, Deserialize, Default)]
struct Nothing;

impl garrison_protocol::Snapshot for Nothing {
    const SCHEMA: &'static str = "send-bench.nothing";
    const VERSION: u16 = 1;
}

struct Echo {
    sinks: Sharded<Sink, Pong>,
    plain: Option<Entities<Sink>>,
    sink_key: u32,
}

impl Entity for Echo {
    const KIND: &'static str = "echo";
    type Key = u32;
    type State = Nothing;
    type Message = EchoMsg;

    async fn handle(
        &self,
        _: &mut EntityContext<'_, Self>,
        message: EchoMsg,
        _: &mut Nothing,
    ) -> Result<(), HandlerError> {
        match message {
            EchoMsg::Wire(ping) => {
                let pong = Pong {
                    n: ping.n.to_native(),
                };
                self.sinks
                    .send(&self.sink_key, &pong, None)
                    .map_err(|error| error.to_string())?;
            }
            EchoMsg::Plain(n) => {
                if let Some(plain) = &self.plain {
                    plain
                        .send(&self.sink_key, SinkMsg::Plain(n))
                        .map_err(|refused| refused.reason.to_string())?;
                }
            }
        }
        Ok(())
    }
}

enum SinkMsg {
    Wire(Validated<Pong>),
    Plain(u32),
}

impl EntityMessage for SinkMsg {
    fn event_type(&self) -> &'static str {
        "pong"
    }
}

struct Sink {
    pongs: mpsc::UnboundedSender<u32>,
}

impl Entity for Sink {
    const KIND: &'static str = "sink";
    type Key = u32;
    type State = Nothing;
    type Message = SinkMsg;

    async fn handle(
        &self,
        _: &mut EntityContext<'_, Self>,
        message: SinkMsg,
        _: &mut Nothing,
    ) -> Result<(), HandlerError> {
        let n = match message {
            SinkMsg::Wire(pong) => pong.n.to_native(),
            SinkMsg::Plain(n) => n,
        };
        let _ = self.pongs.send(n);
        Ok(())
    }
}

/// One node: echo and sink served to the fleet, in a tree.
struct BenchNode {
    node: Arc<Node>,
    echoes: Entities<Echo>,
    pings: Sharded<Echo, Ping>,
    pongs: Option<mpsc::UnboundedReceiver<u32>>,
    _tree: SupervisorRef,
}

async fn node(id: &str) -> Result<BenchNode, Error> {
    let table = table();
    let kinds = Kinds::new();
    let config = KindConfig {
        mailbox_capacity: 4096,
        ..KindConfig::default()
    };
    let echoes = Entities::<Echo>::declare(config.clone())?;
    let sinks = Entities::<Sink>::declare(config)?;
    kinds.serve(echoes.clone(), EchoMsg::Wire);
    kinds.serve(sinks.clone(), SinkMsg::Wire);
    let node = Arc::new(
        Node::start(
            NodeConfig {
                id: id.to_owned(),
                cookie: COOKIE.to_owned(),
                listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 0,
                shards: SHARDS,
            },
            table.clone(),
            kinds,
        )
        .await?,
    );
    let (tx, rx) = mpsc::unbounded_channel();
    echoes.serve(Echo {
        sinks: Sharded::new(node.clone()),
        plain: Some(sinks.clone()),
        sink_key: key_on(&table, "sink", "a"),
    })?;
    sinks.serve(Sink { pongs: tx })?;
    let tree = supervisor! {
        "send-bench": one_for_one {
            entities "echoes" => echoes.start();
            entities "sinks" => sinks.start();
        }
    }?
    .start()
    .await?;
    Ok(BenchNode {
        pings: Sharded::new(node.clone()),
        node,
        echoes,
        pongs: Some(rx),
        _tree: tree,
    })
}

/// How a ping is sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Plain,
    Fleet(u32),
}

fn send(node: &BenchNode, route: Route, key: u32, n: u32) -> Result<(), Error> {
    match route {
        Route::Plain => node
            .echoes
            .send(&key, EchoMsg::Plain(n))
            .map_err(|refused| refused.reason.to_string().into()),
        Route::Fleet(key) => node
            .pings
            .send(&key, &Ping { n }, None)
            .map(drop)
            .map_err(|error| error.to_string().into()),
    }
}

/// Round trips one at a time: their durations, sorted.
async fn round_trips(
    node: &BenchNode,
    pongs: &mut mpsc::UnboundedReceiver<u32>,
    route: Route,
    key: u32,
    count: u32,
) -> Result<Vec<Duration>, Error> {
    let mut took = Vec::with_capacity(count as usize);
    for n in 0..count {
        let sent = Instant::now();
        send(node, route, key, n)?;
        let got = pongs.recv().await.ok_or("the sink stopped")?;
        if got != n {
            return Err(format!("pong {got} for ping {n}").into());
        }
        took.push(sent.elapsed());
    }
    took.sort_unstable();
    Ok(took)
}

/// Pongs per second with up to [`WINDOW`] pings in flight.
async fn throughput(
    node: &BenchNode,
    pongs: &mut mpsc::UnboundedReceiver<u32>,
    route: Route,
    key: u32,
    count: u32,
) -> Result<f64, Error> {
    let start = Instant::now();
    let (mut sent, mut got) = (0u32, 0u32);
    while got < count {
        while sent < count && (sent - got) < WINDOW as u32 {
            send(node, route, key, sent)?;
            sent += 1;
        }
        pongs.recv().await.ok_or("the sink stopped")?;
        got += 1;
    }
    Ok(f64::from(count) / start.elapsed().as_secs_f64())
}

fn percentile(sorted: &[Duration], at: f64) -> Duration {
    sorted[((sorted.len() as f64 * at) as usize).min(sorted.len() - 1)]
}

struct Peer {
    child: Child,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if std::env::var_os(PEER).is_some() {
        return runtime.block_on(peer());
    }
    let mut pings = 20_000u32;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--pings" {
            pings = args.next().ok_or("--pings N")?.parse()?;
        }
    }
    runtime.block_on(bench(pings))
}

async fn peer() -> Result<(), Error> {
    let b = node("b").await?;
    println!("@@ {}", b.node.addr());
    // Serves until its stdin closes (the bench ended) or it is killed.
    tokio::task::spawn_blocking(|| for _ in std::io::stdin().lock().lines() {}).await?;
    Ok(())
}

async fn bench(pings: u32) -> Result<(), Error> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(PEER, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let peer_addr: SocketAddr = loop {
        let line = lines.next().ok_or("the peer ended")??;
        if let Some(addr) = line.strip_prefix("@@ ") {
            break addr.parse()?;
        }
    };
    let _stdin = child.stdin.take();
    let _peer = Peer { child };
    let mut a = node("a").await?;
    a.node
        .connect(peer_addr, "b", Duration::from_secs(15))
        .await?;
    let mut pongs = a.pongs.take().ok_or("pongs")?;
    let table = table();
    let here = key_on(&table, "echo", "a");
    let there = key_on(&table, "echo", "b");
    let routes = [
        ("plain (one process)", Route::Plain, here),
        ("fleet, same node", Route::Fleet(here), here),
        ("fleet, another node", Route::Fleet(there), there),
    ];
    // Warm-up: every route, once over.
    for (_, route, key) in routes {
        round_trips(&a, &mut pongs, route, key, 1_000).await?;
    }
    println!(
        "\n{:<22} {:>10} {:>10} {:>14}",
        "route", "rtt p50", "rtt p99", "pongs/s"
    );
    let mut results = Vec::new();
    for (name, route, key) in routes {
        let rtt = round_trips(&a, &mut pongs, route, key, pings).await?;
        let rate = throughput(&a, &mut pongs, route, key, pings).await?;
        let (p50, p99) = (percentile(&rtt, 0.5), percentile(&rtt, 0.99));
        println!(
            "{name:<22} {:>8.1}us {:>8.1}us {rate:>14.0}",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
        results.push((p50, rate));
    }
    let (plain, same, other) = (results[0], results[1], results[2]);
    let ratio = |slow: Duration, fast: Duration| slow.as_secs_f64() / fast.as_secs_f64();
    println!(
        "\nfleet layer on one node: round trip {:.2}x plain, throughput {:.2}x plain\n\
         another node against the same node: round trip {:.2}x, throughput {:.2}x",
        ratio(same.0, plain.0),
        same.1 / plain.1,
        ratio(other.0, same.0),
        other.1 / same.1,
    );
    std::io::stdout().flush()?;
    Ok(())
}
