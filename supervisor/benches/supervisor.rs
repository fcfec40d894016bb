//! Supervisor benchmarks: Garrison's supervision (`garrison`) beside a hand-written ractor
//! supervisor that respawns in `handle_supervisor_evt` (`ractor`), in one process.
//!
//! Run with: `cargo bench -p garrison-supervisor`

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use garrison_supervisor::{
    ChildRef, ChildSpec, HandlerError, Start, SupervisorBuilder, SupervisorRef, Worker,
    WorkerContext,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::{
    runtime::Runtime,
    sync::{oneshot, watch},
};

/// The benchmark child: counts, crashes on request, answers pings.
#[derive(Debug)]
enum Msg {
    Crash,
    Add(u64),
    Ping(oneshot::Sender<u64>),
}

struct Child;

impl Worker for Child {
    type Message = Msg;
    type State = u64;

    async fn start(&self, _: &WorkerContext<Msg>) -> Result<u64, HandlerError> {
        Ok(0)
    }

    async fn handle(
        &self,
        _: &WorkerContext<Msg>,
        message: Msg,
        total: &mut u64,
    ) -> Result<(), HandlerError> {
        match message {
            Msg::Crash => panic!("crash requested"),
            Msg::Add(n) => *total += n,
            Msg::Ping(reply) => {
                let _ = reply.send(*total);
            }
        }
        Ok(())
    }
}

/// The same child as a plain ractor actor.
struct RawChild;

impl Actor for RawChild {
    type Msg = Msg;
    type State = u64;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Msg>, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _: ActorRef<Msg>,
        message: Msg,
        total: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            Msg::Crash => panic!("crash requested"),
            Msg::Add(n) => *total += n,
            Msg::Ping(reply) => {
                let _ = reply.send(*total);
            }
        }
        Ok(())
    }
}

/// The baseline: the supervisor a ractor user writes by hand. It respawns the child on failure
/// and publishes the new `ActorRef` (every old copy is stale), with no ordering, intensity,
/// backoff or queue preservation.
struct RawSupervisor;

impl Actor for RawSupervisor {
    type Msg = ();
    type State = watch::Sender<ActorRef<Msg>>;
    type Arguments = oneshot::Sender<watch::Receiver<ActorRef<Msg>>>;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        reply: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (child, _) = Actor::spawn_linked(None, RawChild, (), myself.get_cell()).await?;
        let (publish, current) = watch::channel(child);
        let _ = reply.send(current);
        Ok(publish)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        publish: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(..) = event {
            let (child, _) = Actor::spawn_linked(None, RawChild, (), myself.get_cell()).await?;
            publish.send_replace(child);
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

async fn garrison_tree() -> (SupervisorRef, ChildRef<Msg>) {
    let root = SupervisorBuilder::new("bench")
        // Never reached at tens of microseconds per restart, and it bounds the intensity window to
        // 1,000 timestamps (a window of u32::MAX per second would legitimately hold every restart
        // of the last second, which the storm would report as growth).
        .intensity(1_000, Duration::from_millis(10))
        .child(ChildSpec::new("child", Start::worker(|| Child)))
        .build()
        .expect("tree")
        .start()
        .await
        .expect("start");
    let child = root.child::<Msg>("child").await.expect("child");
    (root, child)
}

async fn raw_tree() -> (ActorRef<()>, watch::Receiver<ActorRef<Msg>>) {
    let (reply, current) = oneshot::channel();
    let (supervisor, _) = Actor::spawn(None, RawSupervisor, reply)
        .await
        .expect("spawn");
    (supervisor, current.await.expect("child ref"))
}

/// Waits until every message sent so far is handled, waiting for room in a full mailbox.
async fn flush(child: &ChildRef<Msg>) {
    loop {
        match child.call(Msg::Ping).await {
            Ok(_) => return,
            Err(garrison_supervisor::Error::MailboxFull { .. }) => tokio::task::yield_now().await,
            Err(error) => panic!("flush: {error}"),
        }
    }
}

/// Garrison: crash, then ping through the same handle (the ping queues and reaches the new
/// incarnation).
async fn garrison_restart(child: &ChildRef<Msg>) {
    child.send(Msg::Crash).expect("queued");
    child
        .call(Msg::Ping)
        .await
        .expect("reply from the restarted child");
}

/// ractor: crash, wait for the supervisor to publish the new ref, then ping it.
async fn raw_restart(current: &mut watch::Receiver<ActorRef<Msg>>) {
    current
        .borrow_and_update()
        .send_message(Msg::Crash)
        .expect("sent");
    current.changed().await.expect("respawned");
    let (reply, answer) = oneshot::channel();
    current
        .borrow()
        .send_message(Msg::Ping(reply))
        .expect("sent");
    answer.await.expect("reply");
}

fn restart_latency(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("restart_latency");
    let (root, child) = runtime.block_on(garrison_tree());
    group.bench_function("garrison", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    garrison_restart(&child).await;
                }
                start.elapsed()
            })
        })
    });
    runtime.block_on(root.stop()).expect("stop");
    let (supervisor, mut current) = runtime.block_on(raw_tree());
    group.bench_function("ractor", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    raw_restart(&mut current).await;
                }
                start.elapsed()
            })
        })
    });
    supervisor.stop(None);
    group.finish();
}

fn supervised_send(c: &mut Criterion) {
    const MESSAGES: u64 = 10_000;
    let runtime = runtime();
    let mut group = c.benchmark_group("supervised_send");
    group.throughput(Throughput::Elements(MESSAGES));
    let (root, child) = runtime.block_on(garrison_tree());
    group.bench_function("garrison", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    let mut sent = 0;
                    while sent < MESSAGES {
                        // A full mailbox hands the message back: yield and retry, as a
                        // producer honouring backpressure does.
                        match child.send(Msg::Add(1)) {
                            Ok(_) => sent += 1,
                            Err(_) => tokio::task::yield_now().await,
                        }
                    }
                    flush(&child).await;
                }
                start.elapsed()
            })
        })
    });
    runtime.block_on(root.stop()).expect("stop");
    let (supervisor, current) = runtime.block_on(raw_tree());
    let raw = current.borrow().clone();
    group.bench_function("ractor", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    for _ in 0..MESSAGES {
                        raw.send_message(Msg::Add(1)).expect("sent");
                    }
                    let (reply, answer) = oneshot::channel();
                    raw.send_message(Msg::Ping(reply)).expect("sent");
                    answer.await.expect("flush");
                }
                start.elapsed()
            })
        })
    });
    supervisor.stop(None);
    group.finish();
}

/// 10,000 restarts in a row for each side: time per restart, p50/p99, and RSS before and after
/// (after a 2,000-restart warm-up: the allocator is at steady state and the tree's bounded
/// 4,096-event ring, three events per restart, is full).
fn restart_storm() {
    const RESTARTS: usize = 10_000;
    let runtime = runtime();
    println!("\nrestart_storm: {RESTARTS} restarts in a row (after 2,000 warm-up)");
    println!(
        "{:<10} {:>12} {:>10} {:>10} {:>12} {:>12}",
        "", "per restart", "p50", "p99", "RSS before", "RSS after"
    );
    let mut means = Vec::new();
    for side in ["garrison", "ractor"] {
        let latencies = runtime.block_on(async {
            let mut latencies = Vec::with_capacity(RESTARTS);
            let (before, after);
            if side == "garrison" {
                let (root, child) = garrison_tree().await;
                for _ in 0..2_000 {
                    garrison_restart(&child).await;
                }
                before = garrison_tests::bench::rss_bytes() / 1024;
                for _ in 0..RESTARTS {
                    let start = Instant::now();
                    garrison_restart(&child).await;
                    latencies.push(start.elapsed());
                }
                after = garrison_tests::bench::rss_bytes() / 1024;
                root.stop().await.expect("stop");
            } else {
                let (supervisor, mut current) = raw_tree().await;
                for _ in 0..2_000 {
                    raw_restart(&mut current).await;
                }
                before = garrison_tests::bench::rss_bytes() / 1024;
                for _ in 0..RESTARTS {
                    let start = Instant::now();
                    raw_restart(&mut current).await;
                    latencies.push(start.elapsed());
                }
                after = garrison_tests::bench::rss_bytes() / 1024;
                supervisor.stop(None);
            }
            (latencies, before, after)
        });
        let (mut latencies, before, after) = latencies;
        let mean = latencies.iter().sum::<Duration>() / RESTARTS as u32;
        latencies.sort();
        println!(
            "{side:<10} {:>12.1?} {:>10.1?} {:>10.1?} {:>9} KiB {:>9} KiB",
            mean,
            garrison_tests::bench::percentile(&latencies, 0.5),
            garrison_tests::bench::percentile(&latencies, 0.99),
            before,
            after
        );
        means.push(mean);
    }
    println!(
        "restart_storm ratio (ractor / garrison): {:.2}x",
        means[1].as_secs_f64() / means[0].as_secs_f64()
    );
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = restart_latency, supervised_send
}

fn main() {
    garrison_tests::bench::silence_requested_panics("crash requested");
    benches();
    config().final_summary();
    // The storm is a fixed-count run, not a criterion sample: skip it when criterion is only
    // smoke-testing the benches (`cargo test --benches`) or filtering to other groups.
    if garrison_tests::bench::extra_measurement_selected("restart_storm") {
        restart_storm();
    }
    garrison_tests::bench::report_ratios(&[
        ("restart_latency", "ractor"),
        ("supervised_send", "ractor"),
    ]);
}
