//! A scriptable worker that records every start, stop and handled message in a shared log, and a
//! polling helper that waits for a condition with a deadline instead of sleeping.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use garrison_supervisor::{HandlerError, Start, Worker, WorkerContext};
use tokio::sync::oneshot;

/// What a probe is told to do.
#[derive(Debug)]
pub enum Command {
    /// Log `msg <id>#<incarnation> <n>`.
    Note(u32),
    /// Panic with `boom <id>`.
    Panic,
    /// Return an error `failed <id>`.
    Fail,
    /// Stop normally.
    Stop,
    /// Await this gate before going on (holds the mailbox behind it).
    Gate(oneshot::Receiver<()>),
    /// Never return, ignoring stop requests until killed.
    Hang,
    /// As [`Command::Hang`], saying once it has begun.
    HangSaying(oneshot::Sender<()>),
    /// Reply with the incarnation handling it.
    Incarnation(oneshot::Sender<u64>),
    /// Say it has begun, then block its thread (no await: a kill cannot cancel it) until
    /// `release` is sent to or dropped, and log `end <id>#<n>`.
    Block {
        /// Told once the handler blocks.
        entered: oneshot::Sender<()>,
        /// What it blocks on.
        release: std::sync::mpsc::Receiver<()>,
    },
    /// From now on, log `drop <id>#<n>` when this incarnation's state is dropped.
    LogDrop,
    /// Stop normally, and in the stop hook say so, then block its thread until `release` is
    /// sent to or dropped, and log `stop <id>#<n>`.
    StopBlocked {
        /// Told once the stop hook blocks.
        entered: oneshot::Sender<()>,
        /// What it blocks on.
        release: std::sync::mpsc::Receiver<()>,
    },
}

/// A stop hook's gate: told once it blocks, and what it blocks on.
type StopGate = (oneshot::Sender<()>, std::sync::mpsc::Receiver<()>);

/// A probe incarnation's state.
#[derive(Default)]
pub struct ProbeState {
    gate: Option<StopGate>,
    /// Where, and as whom, its drop is logged (after [`Command::LogDrop`]).
    drop_log: Option<(Log, String)>,
}

impl Drop for ProbeState {
    fn drop(&mut self) {
        if let Some((log, name)) = self.drop_log.take() {
            log.push(format!("drop {name}"));
        }
    }
}

/// A shared, ordered record of what probes did.
#[derive(Clone, Default, Debug)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// Appends one entry.
    pub fn push(&self, entry: String) {
        self.0.lock().expect("log lock").push(entry);
    }

    /// A copy of every entry so far.
    pub fn entries(&self) -> Vec<String> {
        self.0.lock().expect("log lock").clone()
    }

    /// Entries after the first `skip`.
    pub fn since(&self, skip: usize) -> Vec<String> {
        self.entries().into_iter().skip(skip).collect()
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.0.lock().expect("log lock").len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How many of a probe's next starts fail (shared across incarnations).
#[derive(Clone, Default, Debug)]
pub struct StartFailures(Arc<Mutex<u32>>);

impl StartFailures {
    /// Makes the next `count` starts fail.
    pub fn fail_next(&self, count: u32) {
        *self.0.lock().expect("lock") = count;
    }

    fn take(&self) -> bool {
        let mut left = self.0.lock().expect("lock");
        if *left > 0 {
            *left -= 1;
            true
        } else {
            false
        }
    }
}

/// A worker that logs `start <id>#<n>`, `stop <id>#<n>` and `msg <id>#<n> <k>`.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Where it logs.
    pub log: Log,
    /// Its start failures.
    pub failures: StartFailures,
}

impl Probe {
    /// A `Start` for a probe logging to `log`.
    pub fn start(log: &Log) -> Start {
        Probe::start_failing(log, &StartFailures::default())
    }

    /// A `Start` for a probe whose starts fail while `failures` says so.
    pub fn start_failing(log: &Log, failures: &StartFailures) -> Start {
        let probe = Probe {
            log: log.clone(),
            failures: failures.clone(),
        };
        Start::worker(move || probe.clone())
    }
}

fn name(context: &WorkerContext<Command>) -> String {
    format!("{}#{}", context.id(), context.incarnation())
}

impl Worker for Probe {
    type Message = Command;
    type State = ProbeState;

    async fn start(&self, context: &WorkerContext<Command>) -> Result<ProbeState, HandlerError> {
        if self.failures.take() {
            self.log.push(format!("start-failed {}", name(context)));
            return Err(format!("refused to start {}", context.id()).into());
        }
        self.log.push(format!("start {}", name(context)));
        Ok(ProbeState::default())
    }

    async fn handle(
        &self,
        context: &WorkerContext<Command>,
        message: Command,
        state: &mut ProbeState,
    ) -> Result<(), HandlerError> {
        match message {
            Command::Note(n) => self.log.push(format!("msg {} {n}", name(context))),
            Command::Panic => panic!("boom {}", context.id()),
            Command::Fail => return Err(format!("failed {}", context.id()).into()),
            Command::Stop => context.stop(),
            Command::Gate(gate) => {
                let _ = gate.await;
            }
            Command::Hang => std::future::pending::<()>().await,
            Command::HangSaying(entered) => {
                let _ = entered.send(());
                std::future::pending::<()>().await
            }
            Command::Incarnation(reply) => {
                let _ = reply.send(context.incarnation());
            }
            Command::Block { entered, release } => {
                let _ = entered.send(());
                let _ = release.recv();
                self.log.push(format!("end {}", name(context)));
            }
            Command::StopBlocked { entered, release } => {
                state.gate = Some((entered, release));
                context.stop();
            }
            Command::LogDrop => state.drop_log = Some((self.log.clone(), name(context))),
        }
        Ok(())
    }

    async fn stop(&self, context: &WorkerContext<Command>, state: &mut ProbeState) {
        if let Some((entered, release)) = state.gate.take() {
            let _ = entered.send(());
            let _ = release.recv();
        }
        self.log.push(format!("stop {}", name(context)));
    }
}

/// The value of the sample `series` (name and labels exactly as exposed) in a Prometheus or
/// OpenMetrics text, if present.
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `condition` every millisecond until it holds, failing after `limit`. This is how tests
/// wait for asynchronous effects: never a fixed sleep.
///
/// # Panics
/// When the deadline passes, with `what` in the message.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
