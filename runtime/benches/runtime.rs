//! Entity benchmarks: Garrison's entities (`garrison`) beside raw ractor actors (`ractor`), in
//! one process.
//!
//! Run with: `cargo bench -p garrison-runtime --bench runtime`

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use garrison_protocol::Snapshot;
use garrison_runtime::{
    Activation, Checkpoint, Entities, Entity, EntityContext, EntityMessage, HandlerError,
    KindConfig,
};
use garrison_supervisor::{ChildSpec, SupervisorBuilder, SupervisorRef};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::{runtime::Runtime, sync::oneshot};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Default)]
struct Blob {
    total: u64,
    /// 1 KiB of state, restored on every restart in `restart_recover`.
    data: Vec<u8>,
}

impl Snapshot for Blob {
    const SCHEMA: &'static str = "bench.blob";
    const VERSION: u16 = 1;
}

#[derive(Debug)]
enum Msg {
    Add(u64),
    Crash,
    Ping(oneshot::Sender<u64>),
}

// The raw-ractor baseline's message: explicit under ractor's `cluster` feature.
#[cfg(feature = "cluster")]
impl ractor::Message for Msg {}

impl EntityMessage for Msg {
    fn event_type(&self) -> &'static str {
        match self {
            Msg::Add(_) => "add",
            Msg::Crash => "crash",
            Msg::Ping(_) => "ping",
        }
    }
}

struct Counter;

impl Entity for Counter {
    const KIND: &'static str = "bench";
    type Key = u64;
    type State = Blob;
    type Message = Msg;

    async fn activate(&self, _: &u64, recovered: Activation<Blob>) -> Result<Blob, HandlerError> {
        Ok(recovered.into_state().unwrap_or_else(|| Blob {
            total: 0,
            data: vec![7; 1024],
        }))
    }

    async fn handle(
        &self,
        _: &mut EntityContext<'_, Self>,
        message: Msg,
        state: &mut Blob,
    ) -> Result<(), HandlerError> {
        match message {
            Msg::Add(n) => state.total += n,
            Msg::Crash => panic!("crash requested"),
            Msg::Ping(reply) => {
                let _ = reply.send(state.total);
            }
        }
        Ok(())
    }
}

struct RawCounter;

impl Actor for RawCounter {
    type Msg = Msg;
    type State = Blob;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Msg>, _: ()) -> Result<Blob, ActorProcessingErr> {
        Ok(Blob {
            total: 0,
            data: vec![7; 1024],
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Msg>,
        message: Msg,
        state: &mut Blob,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            Msg::Add(n) => state.total += n,
            Msg::Crash => panic!("crash requested"),
            Msg::Ping(reply) => {
                let _ = reply.send(state.total);
            }
        }
        Ok(())
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn kind(config: KindConfig) -> (Entities<Counter>, SupervisorRef) {
    let entities = Entities::new(Counter, config).expect("kind");
    let tree = SupervisorBuilder::new("bench")
        .child(ChildSpec::new("entities", entities.start()))
        .build()
        .expect("tree")
        .start()
        .await
        .expect("start");
    (entities, tree)
}

async fn ping(entities: &Entities<Counter>, key: u64) -> u64 {
    let (reply, answer) = oneshot::channel();
    let mut message = Msg::Ping(reply);
    // After a flood the mailbox may be full: wait for room, as any producer must.
    while let Err(refused) = entities.send(&key, message) {
        message = refused.message;
        tokio::task::yield_now().await;
    }
    answer.await.expect("reply")
}

async fn raw_ping(actor: &ActorRef<Msg>) -> u64 {
    let (reply, answer) = oneshot::channel();
    actor.send_message(Msg::Ping(reply)).expect("sent");
    answer.await.expect("reply")
}

/// Sends `MESSAGES` adds to entity 1 (waiting for room when the mailbox is full), then a ping
/// that returns once all were handled; the time of `iterations` such rounds.
fn flood(runtime: &Runtime, entities: &Entities<Counter>, iterations: u64) -> Duration {
    runtime.block_on(async {
        let start = Instant::now();
        for _ in 0..iterations {
            let mut sent = 0;
            while sent < MESSAGES {
                match entities.send(&1, Msg::Add(1)) {
                    Ok(()) => sent += 1,
                    // Backpressure: a full mailbox hands the message back.
                    Err(_) => tokio::task::yield_now().await,
                }
            }
            ping(entities, 1).await;
        }
        start.elapsed()
    })
}

const MESSAGES: u64 = 10_000;

/// The send path against raw ractor. Neither side keeps a durable copy of the state here (the
/// entity checkpoints `Never`); `checkpoint_cost` measures what the default checkpoint adds.
fn entity_send(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("entity_send");
    group.throughput(Throughput::Elements(MESSAGES));
    let (entities, tree) = runtime.block_on(kind(KindConfig {
        mailbox_capacity: 1024,
        checkpoint: Checkpoint::Never,
        ..KindConfig::default()
    }));
    group.bench_function("garrison", |b| {
        b.iter_custom(|iterations| flood(&runtime, &entities, iterations))
    });
    runtime.block_on(tree.stop()).expect("stop");
    let (raw, _) = runtime
        .block_on(Actor::spawn(None, RawCounter, ()))
        .expect("spawn");
    group.bench_function("ractor", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    for _ in 0..MESSAGES {
                        raw.send_message(Msg::Add(1)).expect("sent");
                    }
                    raw_ping(&raw).await;
                }
                start.elapsed()
            })
        })
    });
    raw.stop(None);
    group.finish();
}

/// What the default checkpoint (a snapshot of the 1 KiB state after every message) costs the
/// same flood, against the same kind checkpointing `Never`.
fn checkpoint_cost(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("checkpoint_cost");
    group.throughput(Throughput::Elements(MESSAGES));
    for (name, checkpoint) in [
        ("garrison", Checkpoint::default()),
        ("never", Checkpoint::Never),
    ] {
        let (entities, tree) = runtime.block_on(kind(KindConfig {
            mailbox_capacity: 1024,
            checkpoint,
            ..KindConfig::default()
        }));
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| flood(&runtime, &entities, iterations))
        });
        runtime.block_on(tree.stop()).expect("stop");
    }
    group.finish();
}

fn activation(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("activation");
    let (entities, tree) = runtime.block_on(kind(KindConfig::default()));
    let mut next_key = 0u64;
    group.bench_function("garrison", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    next_key += 1;
                    ping(&entities, next_key).await;
                }
                start.elapsed()
            })
        })
    });
    runtime.block_on(tree.stop()).expect("stop");
    group.bench_function("ractor", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut actors = Vec::with_capacity(iterations as usize);
                let start = Instant::now();
                for _ in 0..iterations {
                    let (actor, _) = Actor::spawn(None, RawCounter, ()).await.expect("spawn");
                    raw_ping(&actor).await;
                    actors.push(actor);
                }
                let elapsed = start.elapsed();
                for actor in actors {
                    actor.stop(None);
                }
                elapsed
            })
        })
    });
    group.finish();
}

/// One message at a time through 1,000 entities and back (a ping and its reply), all on one
/// current-thread runtime, against 1,000 raw ractor actors: the hop an input takes to an entity
/// on its connection's event loop, without the sockets. Three alternating runs; the median
/// ratio is the figure.
fn entity_ping() {
    const ENTITIES: u64 = 1_000;
    const ROUNDS: u64 = 200;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        let (entities, tree) = kind(KindConfig {
            checkpoint: Checkpoint::Never,
            ..KindConfig::default()
        })
        .await;
        let mut actors = Vec::new();
        for _ in 0..ENTITIES {
            actors.push(Actor::spawn(None, RawCounter, ()).await.expect("spawn").0);
        }
        // Activates every entity: the runs measure the steady state.
        for key in 0..ENTITIES {
            ping(&entities, key).await;
        }
        let per_ping = |elapsed: Duration| elapsed.as_nanos() as f64 / (ENTITIES * ROUNDS) as f64;
        for _ in 0..3 {
            let start = Instant::now();
            for _ in 0..ROUNDS {
                for key in 0..ENTITIES {
                    ping(&entities, key).await;
                }
            }
            ours.push(per_ping(start.elapsed()));
            let start = Instant::now();
            for _ in 0..ROUNDS {
                for actor in &actors {
                    raw_ping(actor).await;
                }
            }
            theirs.push(per_ping(start.elapsed()));
        }
        for actor in actors {
            actor.stop(None);
        }
        tree.stop().await.expect("stop");
    });
    let mut ratios: Vec<f64> = theirs
        .iter()
        .zip(&ours)
        .map(|(raw, ours)| raw / ours)
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "\nentity_ping: {ENTITIES} entities on one thread, one ping and reply at a time: garrison {} ns, ractor {} ns per ping; speedup median {:.2}x (runs {:.2}-{:.2}x)",
        ours.iter()
            .map(|ns| format!("{ns:.0}"))
            .collect::<Vec<_>>()
            .join("/"),
        theirs
            .iter()
            .map(|ns| format!("{ns:.0}"))
            .collect::<Vec<_>>()
            .join("/"),
        ratios[1],
        ratios[0],
        ratios[2]
    );
}

/// Panic -> serving again with 1 KiB of state restored from the checkpoint, p50 and p99.
fn restart_recover() {
    const RESTARTS: usize = 2_000;
    let runtime = runtime();
    let mut latencies = runtime.block_on(async {
        let config = KindConfig {
            checkpoint: Checkpoint::EveryMessages(1),
            max_restarts: 1_000,
            restart_period: Duration::from_millis(10),
            ..KindConfig::default()
        };
        let (entities, tree) = kind(config).await;
        entities.send(&1, Msg::Add(5)).expect("queued");
        assert_eq!(ping(&entities, 1).await, 5);
        let mut latencies = Vec::with_capacity(RESTARTS);
        for _ in 0..RESTARTS {
            let start = Instant::now();
            entities.send(&1, Msg::Crash).expect("queued");
            assert_eq!(ping(&entities, 1).await, 5, "state restored");
            latencies.push(start.elapsed());
        }
        tree.stop().await.expect("stop");
        latencies
    });
    latencies.sort();
    let mean = latencies.iter().sum::<Duration>() / RESTARTS as u32;
    println!(
        "\nrestart_recover: {RESTARTS} panics, each -> serving again with 1 KiB state restored: mean {mean:.1?}, p50 {:.1?}, p99 {:.1?}",
        garrison_tests::bench::percentile(&latencies, 0.5),
        garrison_tests::bench::percentile(&latencies, 0.99)
    );
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = entity_send, checkpoint_cost, activation
}

fn main() {
    garrison_tests::bench::silence_requested_panics("crash requested");
    benches();
    config().final_summary();
    if garrison_tests::bench::extra_measurement_selected("restart_recover") {
        restart_recover();
    }
    if garrison_tests::bench::extra_measurement_selected("entity_ping") {
        entity_ping();
    }
    garrison_tests::bench::report_ratios(&[
        ("entity_send", "ractor"),
        ("checkpoint_cost", "never"),
        ("activation", "ractor"),
    ]);
}
